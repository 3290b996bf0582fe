"""`nix-image-registry`, the operator's command: a Flask CLI group.

The installed console script (setup.cfg) runs `main`.  Every subcommand
reads the same environment as the server; `flask --app app ...` runs the
same commands (app/__init__.py adds them to the app's own group).
"""
from __future__ import annotations

import logging
import os
import sys

import click
from flask.cli import FlaskGroup

from . import commands, upkeep
from .config import Config

PROG = "nix-image-registry"


class RegistryGroup(FlaskGroup):
    """Flask's CLI group, with the registry's commands only.

    Flask's own group loads the app to list and find commands; here every
    command is the group's own, so `--help` and `config` create no storage
    folder, and a bad setting fails the command that needs the app, in one
    line.
    """

    def __init__(self, **extra):
        super().__init__(add_default_commands=False, add_version_option=False,
                         create_app=_create_app, load_dotenv=False, set_debug_flag=False,
                         **extra)
        # --app and --debug choose another app; --env-file needs python-dotenv
        self.params = [p for p in self.params if p.name not in ("app", "debug", "env_file")]

    def make_context(self, info_name, args, parent=None, **extra):
        extra.setdefault("obj", upkeep.EnvironmentScriptInfo(
            create_app=_create_app, set_debug_flag=False, load_dotenv_defaults=False))
        return super().make_context(info_name, args, parent=parent, **extra)

    def get_command(self, ctx, name):
        return click.Group.get_command(self, ctx, name)

    def list_commands(self, ctx):
        return click.Group.list_commands(self, ctx)


def _create_app():
    from . import create_app
    return create_app()


@click.command("serve", context_settings={"ignore_unknown_options": True})
@click.argument("gunicorn_options", nargs=-1, type=click.UNPROCESSED)
def serve(gunicorn_options):
    """Serve the registry under gunicorn, configured by the environment.

    PORT and LISTEN_ADDRESS say where; the other variables what it serves
    (`nix-image-registry config` shows them).  GUNICORN_OPTIONS are
    gunicorn's own, for what the environment does not set (e.g.
    --workers 4).
    """
    import storage
    config = Config.from_env()  # a bad setting stops here, in one line
    # and storage that cannot be used (no credentials, no bucket) here,
    # not in every worker as it boots
    storage.from_config(config)
    # gunicorn runs in a fresh interpreter: this one has imported
    # prometheus_client (with the commands), which picks its kind of
    # counters when imported, before gunicorn's settings could name the
    # folder the workers count in together (app/http/gunicorn_conf.py)
    # (-P: not the current folder's own `app`, whatever folder it is)
    os.execv(sys.executable, [sys.executable, "-P", "-m", "app.http.serving", *gunicorn_options])


@click.command("config")
def show_config():
    """Print the settings in effect, from the environment or their defaults.

    One line each, VARIABLE=value, as a server started with this
    environment would have them; passwords and tokens in URLs are masked.
    """
    rows = Config.from_env().describe()
    lines = [(f"{variable}={value}", chosen) for variable, value, chosen in rows]
    width = max(len(line) for line, _ in lines)
    for line, chosen in lines:
        click.echo(line if chosen else f"{line:<{width}}  # default")


cli = click.version_option(package_name="nix-image-registry", prog_name=PROG)(RegistryGroup(
    name=PROG, help="The Nix image registry: serve it, and look after what it stores.  "
    "Settings come from the environment (see `config`)."))
for command in (serve, show_config, upkeep.gc, commands.prebuild, commands.sbom,
                upkeep.failures):
    cli.add_command(command)


def main():
    from storage import StorageError
    # What goes wrong is said once, below or by click; log lines come only
    # once a command sets up the registry's logging (its app, gunicorn)
    logging.getLogger().addHandler(logging.NullHandler())
    try:
        cli.main(prog_name=PROG)
    except StorageError as e:
        click.echo(f"storage error: {e}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    sys.exit(main())
