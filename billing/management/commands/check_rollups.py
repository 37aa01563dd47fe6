from django.core.management.base import BaseCommand, CommandError

from billing.ledger import rollup_differences


class Command(BaseCommand):
    help = "Prove the daily rollup equals the usage ledger to the last decimal (exit 1 if not)."

    def handle(self, *args, **options):
        differences = rollup_differences()
        if not differences:
            self.stdout.write("rollups agree with the ledger")
            return
        for d in differences[:50]:
            self.stderr.write(
                f"{d.day} user={d.user_id} team={d.team_id} {d.provider}:{d.model} {d.field}:"
                f" ledger={d.ledger} rollup={d.rollup}"
            )
        raise CommandError(f"{len(differences)} rollup value(s) differ from the ledger")
