"""Errors in the OpenAI API's shape: {"error": {"message", "type", "param", "code"}}, with the HTTP status."""
from fastapi.responses import JSONResponse

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
               413: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_error",
               503: "server_unavailable", 504: "timeout"}


class APIError(Exception):
    """A request answered with `status` and an OpenAI-shaped error naming `param` (the field; None: none)."""

    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": ERROR_TYPES.get(self.status, "server_error"),
                          "param": self.param, "code": None}}

    def response(self, headers=None) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=headers)
