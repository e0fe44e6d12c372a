"""Objects whose unpickling runs code, as in a crafted pickle or checkpoint received from someone else."""
import os


class RunsOnUnpickle:
    """Unpickling it calls fn(*args)."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args

    @property
    def called(self) -> str:
        return f"{self.fn.__module__}.{self.fn.__name__}"  # posix.system, io.open


def creating(marker) -> list[RunsOnUnpickle]:
    """Payloads that each create the file marker when unpickled: through a shell, and through open()."""
    return [RunsOnUnpickle(os.system, f"touch {marker}"), RunsOnUnpickle(open, str(marker), "w")]
