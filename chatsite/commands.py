"""Base for the project's management commands (billing's and accounts'): every bad input ends in
ONE line on stderr and a non-zero exit (CONTRACT section 3), argparse's own complaints included
(it would print a usage block), and a command that succeeds prints its one line only. Here, in
the project package, so no app imports another's command internals."""

from __future__ import annotations

import logging
import sys

from django.core.management.base import BaseCommand, CommandError


class OneLineCommand(BaseCommand):
    def create_parser(self, prog_name, subcommand, **kwargs):
        parser = super().create_parser(prog_name, subcommand, **kwargs)

        def error(message: str):
            # Parsing runs outside run_from_argv's CommandError handler: print and exit here.
            if getattr(self, "_called_from_command_line", False):
                sys.stderr.write(f"CommandError: {message}\n")
                sys.exit(2)
            raise CommandError(message)

        parser.error = error
        return parser

    def execute(self, *args, **options):
        # The services log what they change at INFO for the server's log ("provider key main
        # added"); at the shell that line only doubled the command's own. Warnings and errors
        # still show, and -v 2 shows everything.
        if options.get("verbosity", 1) >= 2:
            return super().execute(*args, **options)
        before = logging.root.manager.disable
        logging.disable(max(before, logging.INFO))
        try:
            return super().execute(*args, **options)
        finally:
            logging.disable(before)
