"""Spies on model-side calls, for tests that check what a job fed the model."""

from __future__ import annotations


def spy_on_tube_finetuning(monkeypatch) -> list[list[tuple[str, int]]]:
    """Record each lite fine-tuning on mask tubes as [(label, frames per tube), ...]; the call still runs."""
    import dcsam.video.tubes as tubes_mod

    seen: list[list[tuple[str, int]]] = []
    original = tubes_mod.finetune_lite_on_tubes

    def spy(segmenter, tubes, **kw):
        seen.append([(t.label, len(t.frames)) for t in tubes])
        return original(segmenter, tubes, **kw)

    monkeypatch.setattr(tubes_mod, "finetune_lite_on_tubes", spy)
    return seen
