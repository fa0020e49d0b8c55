"""A server process for restart tests: `python -m tests.server.restarting DB DATA PORT HOLD`.

It hosts "tiny" (the walkthrough net) and "slow", a net whose forward waits while the file HOLD exists.
"""
import pathlib
import sys
import time

import torch
import uvicorn

from nnglass import NNsight
from nnglass.server import Limits, create_app
from tests.server.serving import tiny_model


class Held(torch.nn.Module):
    """Doubles its input, once the file `hold` no longer exists."""

    def __init__(self, hold: str) -> None:
        super().__init__()
        self.hold = pathlib.Path(hold)
        self.layer = torch.nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        while self.hold.exists():
            time.sleep(0.02)
        return self.layer(x * 2)


def main(db: str, data: str, port: str, hold: str) -> None:
    slow = NNsight(Held(hold))
    slow._remote_name = "slow"
    app = create_app({"tiny": tiny_model(), "slow": slow}, f"sqlite:///{db}", Limits(), data)
    uvicorn.run(app, host="127.0.0.1", port=int(port), log_level="warning")


if __name__ == "__main__":
    main(*sys.argv[1:])
