from django.contrib.auth import get_user_model
from django.core.management.base import CommandError

from accounts.models import Team
from billing.budgets import BudgetError, budget_set
from billing.money import money_str
from chatsite.commands import OneLineCommand


class Command(OneLineCommand):
    help = "Set the day/week/month/total budget (USD) of a user or a team."

    def add_arguments(self, parser):
        owner = parser.add_mutually_exclusive_group(required=True)
        owner.add_argument("--user", metavar="USERNAME")
        owner.add_argument("--team", metavar="NAME")
        parser.add_argument("--limit", required=True, metavar="USD")
        # Checked by the service, not argparse `choices`, so the error stays one line.
        parser.add_argument("--period", required=True, metavar="{day,week,month,total}")
        parser.add_argument("--warn", metavar="RATIO", help="warning threshold as a fraction (default 0.8)")

    def handle(self, *args, **options):
        user = team = None
        if options["user"] is not None:
            user = get_user_model().objects.filter(username__iexact=options["user"]).first()
            if user is None:
                raise CommandError(f"unknown user {options['user']!r}")
        else:
            team = Team.objects.filter(name__iexact=options["team"]).first()
            if team is None:
                raise CommandError(f"unknown team {options['team']!r}")
        try:
            budget = budget_set(
                user=user, team=team, period=options["period"], limit=options["limit"], warn_ratio=options["warn"]
            )
        except BudgetError as exc:
            raise CommandError(str(exc)) from None
        owner = user.get_username() if user else team.name
        self.stdout.write(f"{budget.scope} {owner}: {budget.period} budget {money_str(budget.limit)} USD")
