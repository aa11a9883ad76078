"""The Celery side of scenario 1: a no-op task on a Redis broker and result
backend, the setup a studio would reach for first. Loaded by the Celery
worker (`celery -A celery_tasks worker`) and by bench/celery_client.py.
"""

import os

from celery import Celery

app = Celery("rayvault_bench", broker=os.environ["BENCH_REDIS_URL"], backend=os.environ["BENCH_REDIS_URL"])
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task
def noop():
    """Does nothing: what remains is Celery's own dispatch cost."""
    return None
