from billing.keys import key_disable, key_set_draining, keys_by_name

from ._keycommand import KeyCommand


class Command(KeyCommand):
    help = "Disable a provider key (no new calls). With --drain it drains first: replies in flight finish, then it is disabled."

    def add_arguments(self, parser):
        parser.add_argument("--name", required=True)
        parser.add_argument("--drain", action="store_true", help="drain instead of disabling at once")

    def handle(self, *args, **options):
        if options["drain"]:
            key = key_set_draining(key_id=keys_by_name(name=options["name"]).pk)
        else:
            key = key_disable(name=options["name"])
        self.stdout.write(f"Provider key {key.name} is {key.state}.")
