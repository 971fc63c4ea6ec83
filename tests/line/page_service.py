"""A line service with the operator page, in its own process, so a test can kill it (-9).

python tests/line/page_service.py FOLDER PORT: prints "ready" once the page serves, then
inspects a part every 0.2 s (every third one defective) until it is killed.
"""

import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from line_helpers import line_station, start_line
from test_operator_page import part


def main(folder: Path, port: int) -> None:
    count = iter(range(10**9))
    cfg = line_station(folder, {"operator_page": {"host": "127.0.0.1", "port": port}})
    _server, service = start_line(cfg, lambda: part(next(count) % 3 == 0, 7))
    print("ready", flush=True)
    while True:
        service.trigger("network", "test")
        time.sleep(0.2)


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
