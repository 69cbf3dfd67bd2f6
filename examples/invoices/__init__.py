"""The invoices example: an embedded accounts-payable ledger the invoices contract binds to."""
