"""The checks before any route (plain ASGI middleware, which leaves the client's disconnect visible to the routes):
the bearer api key for everything but the page and /health, and a bound on the request body's declared size."""
import secrets

from pixart_jax.serving.errors import APIError

PUBLIC = ("/", "/health", "/favicon.ico")  # and /static/: the page asks for the key itself


class Guard:
    def __init__(self, app, api_key: str | None, max_body: int):
        self.app, self.max_body = app, max_body
        self.expected = None if api_key is None else f"Bearer {api_key}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            error = self._check(scope["path"], dict(scope["headers"]))
            if error is not None:
                headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
                return await error.response(headers)(scope, receive, send)
        return await self.app(scope, receive, send)

    def _check(self, path, headers) -> APIError | None:
        if self.expected and path not in PUBLIC and not path.startswith("/static/"):
            if not secrets.compare_digest(headers.get(b"authorization", b""), self.expected):
                return APIError(401, "a valid api key is needed: Authorization: Bearer <key>")
        length = headers.get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.max_body:
            return APIError(413, f"the request body is larger than {self.max_body} bytes")
        return None
