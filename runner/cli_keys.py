"""``runner keys``: make CurveZMQ key files and authorize them (runner/keys.py does the work)."""

from __future__ import annotations

import click


@click.group("keys")
def keys_group() -> None:
    """CurveZMQ key files: `generate DIR` once, then `add-client`, `add-worker`, `add-admin DIR NAME`.

    See docs/security.md for where each file goes and how to revoke a key.
    """


FORCE_HELP = "Replace existing key files (peers still using the old keys are shut out)."


@keys_group.command("generate")
@click.argument("folder", type=click.Path(file_okay=False))
@click.option("--force", is_flag=True, help=FORCE_HELP)
def keys_generate(folder: str, force: bool) -> None:
    """Make the broker, client and worker key pairs in FOLDER and authorize the client and worker."""
    from runner import keys

    try:
        written = keys.generate(folder, force)
    except (FileExistsError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    for path in written:
        click.echo(path)


def _add_key_command(kind: str) -> None:
    @keys_group.command(f"add-{kind}")
    @click.argument("folder", type=click.Path(file_okay=False))
    @click.argument("name")
    @click.option("--force", is_flag=True, help=FORCE_HELP)
    def add(folder: str, name: str, force: bool) -> None:
        from runner import keys

        try:
            bundle = keys.add(folder, kind, name, force)
        except (FileExistsError, ValueError) as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"{bundle}  (copy this folder to the {kind}'s machine; use it as --curve-keys there)")

    add.help = (f"Make a key pair for one more {kind} named NAME in FOLDER/NAME/ (with the broker's public key) "
                f"and authorize it under FOLDER/authorized/{kind}s/.")


for _kind in ("client", "worker", "admin"):
    _add_key_command(_kind)
