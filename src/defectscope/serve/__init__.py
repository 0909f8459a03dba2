"""`defectscope serve`: an HTTP inspection service over a trained model or a zero-shot
reference bank, with a bounded batching queue, request caps, a bearer token and a journal.

* :mod:`~defectscope.serve.inspector`: the detector loaded once, decisions, regions, the journal
  (``OUT/verdicts.csv``, readable by ``defectscope review OUT``).
* :mod:`~defectscope.serve.batching`: the bounded queue and the inference thread.
* :mod:`~defectscope.serve.decode`: request bodies -> images, with the caps.
* :mod:`~defectscope.serve.app`: the Starlette application, the token gate, the OpenAPI text.
"""

from defectscope.serve.app import Limits, Service, run_server
from defectscope.serve.inspector import Inspector, build_inspector

__all__ = ["Inspector", "Limits", "Service", "build_inspector", "run_server"]
