"""gunicorn settings for library_api (the Procfile uses this file).

Every worker serves the same data directory: writes are serialized by the directory's lock and each
worker follows the others' changes through the journal. The gthread worker is used because a
websocket holds one thread for as long as it is open.
"""

import os

from dotenv import load_dotenv

load_dotenv()

bind = f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '8000')}"
worker_class = "gthread"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("GUNICORN_THREADS", "16"))
timeout = 30
graceful_timeout = 10
keepalive = 5
# Each worker opens the data directory itself (no preload): start-up recovery runs under the lock.
preload_app = False
accesslog = os.environ.get("GUNICORN_ACCESSLOG") or None
errorlog = "-"
