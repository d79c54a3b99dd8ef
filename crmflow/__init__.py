"""crmflow: an embeddable workflow and rules engine for CRM and ERP processes."""
