"""`remote="local"`: run an experiment here, but through the wire format, as a server would run it."""
from __future__ import annotations

import json
from typing import Any

from . import serialize

__all__ = ["LoopbackBackend"]

UNNAMED = "local"  # the wire name of a model built without a repo id


class LoopbackBackend:
    """Serializes the experiment, checks it against the allow-list, decodes it and runs the decoded graphs."""

    def run(self, recorder: Any) -> None:
        data = json.loads(json.dumps(serialize.request(recorder, UNNAMED)))  # only what survives JSON
        hosted = models(recorder)
        for model in hosted.values():
            getattr(model, "dispatch", lambda: None)()  # a LanguageModel built lazily loads its weights
        job = serialize.Job(data, hosted.__getitem__)
        job.run()
        serialize.apply_results(recorder, json.loads(json.dumps(job.encoded_results())))


def models(recorder: Any) -> dict[str, Any]:
    """The experiment's models by the name the request gives them."""
    owners = [recorder, *recorder.experiment.owners.values()]
    found = [owner.model for owner in owners if getattr(owner, "model", None) is not None]
    return {getattr(model, "_remote_name", None) or UNNAMED: model for model in found}
