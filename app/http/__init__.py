"""The registry's HTTP machinery, apart from the Flask application: the
gunicorn worker (worker.py), its reader of plain requests on kept
connections (http1.py) and their answers (http1_response.py), the answers
it gives again without the app (replay.py), connections spread evenly over
the workers (balance.py), the check of the gunicorn internals the worker
relies on (gthread_internals.py), and gunicorn's settings
(gunicorn_conf.py)."""
