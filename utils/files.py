"""Writing a file atomically: to a temporary name in the same folder, flushed to disk, then renamed.
Neither a reader nor a crash (of the process or the host) ever sees it half-written."""

import os
from typing import IO, Callable


def write_atomically(path: str, write_contents: Callable[[IO], None], binary: bool = False) -> None:
    partial_path = f"{path}.partial"
    with open(partial_path, "wb" if binary else "w") as file:
        write_contents(file)
        file.flush()
        os.fsync(file.fileno())
    os.replace(partial_path, path)


def write_text_atomically(path: str, text: str) -> None:
    write_atomically(path, lambda file: file.write(text))
