from decimal import Decimal
account = payments.get_account(id=inputs["account"])
saved = [p.name for p in payments.list_payees(account=account.id)]
transfer = payments.send_payment(
    account=account.id, recipient=inputs["iban"], amount=Decimal(inputs["amount"]), reference=inputs["reference"]
)
conclude(f"Paid {transfer.amount} to {transfer.recipient}: transfer {transfer.id} is {transfer.state}.")
