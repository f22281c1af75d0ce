"""Two minimal agent loops on the official ``openai`` SDK, kept runnable so the migration-cost diff
(:func:`loadtests.migration.sdk_cost`) measures real code: ``sdk_http_loop`` (HTTPS+SSE) and ``sdk_ws_loop``
(WebSocket mode, ``client.responses.connect()``)."""
