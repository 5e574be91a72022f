"""``diffret serve``: a local web page to search an index."""

from __future__ import annotations

from pathlib import Path

import click

_EXAMPLES = """\b
Examples:
  diffret serve ~/videos.index                 # http://127.0.0.1:8765/
  diffret serve ~/videos.index --port 9000
"""


@click.command("serve", epilog=_EXAMPLES)
@click.argument("index_dir", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind. Anything but loopback exposes your videos to the network.")
@click.option("--checkpoint", type=click.Path(path_type=Path, exists=True), default=None,
              help="The model (default: the checkpoint the index was built with).")
@click.option("--device", default="cpu", show_default=True)
def serve(index_dir: Path, port: int, host: str, checkpoint: Path | None, device: str) -> None:
    """Serve a search page for INDEX_DIR: a query box, results as thumbnail strips with
    scores, each linking to its video. Only indexed videos and thumbnails are served."""
    from diffret_cli.search import SearchIndex
    from diffret_cli.search.server import serve as make_server

    index = SearchIndex.open(index_dir, checkpoint=checkpoint, device=device)
    server = make_server(index, host=host, port=port)
    if host not in ("127.0.0.1", "localhost", "::1"):
        click.secho(f"warning: bound to {host}: anyone who can reach it can search and watch the indexed videos",
                    fg="yellow", err=True)
    click.echo(f"serving {index_dir} at {server.url}  (Ctrl+C to stop)")
    try:
        server.serve_forever()
    finally:
        server.server_close()
