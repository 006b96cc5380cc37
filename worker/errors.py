"""Every error export-worker raises on purpose, under one root.

    ExportWorkerError
    ├── ConfigError                 bad settings or connections file (fatal at start-up)
    ├── DecodeError                 bytes that are not a record of our schemas (reason_code)
    ├── RegistryUnavailable         the schema registry could not be asked (retriable)
    ├── InvalidRequest              a decoded request that cannot be run (reason_code)
    ├── VendorError                 anything a vendor call ended with
    │   ├── VendorUnavailable       5xx, timeouts, resets, 429 (retriable, retry_after)
    │   ├── AuthFailed              credentials refused even after a token refresh
    │   ├── VendorBusy              vendor refuses for now (one billing-run per store)
    │   ├── VendorRejected          vendor refused the job for good (4xx, successful=false)
    │   └── MalformedAnswer         an answer we cannot parse (retriable, body kept redacted)
    │       └── AnswerTooLarge      an answer body over EXPORT_WORKER_MAX_ANSWER_BYTES (unread)
    ├── ResultStoreError            writing a collected artifact failed (retriable)
    ├── StoreError                  the on-disk state store failed (tree in worker.store.errors)
    └── WorkerFenced                the transactional producer is fenced, and not replaceable: stop
        └── ProducerStuck           the transactional producer is unusable: replace the process

Each class says whether retrying can help (``retriable``); a vendor error also says
whether the vendor may have acted on the request anyway (``outcome_unknown``): a submit
that timed out may have created a job, one refused with 429 did not.
"""

from __future__ import annotations


class ExportWorkerError(Exception):
    """Root of every error export-worker raises on purpose."""

    retriable: bool = False


class ConfigError(ExportWorkerError):
    """Settings or the connections file are wrong; the worker cannot start."""


class DecodeError(ExportWorkerError):
    """Bytes that cannot be decoded as a record of our schemas."""

    def __init__(self, reason_code: str, message: str) -> None:
        super().__init__(message)
        self.reason_code = reason_code
        self.message = message


class InvalidRequest(ExportWorkerError):
    """A well-formed request that cannot be run (bad values, unknown connection)."""

    def __init__(self, reason_code: str, message: str) -> None:
        super().__init__(message)
        self.reason_code = reason_code
        self.message = message


class VendorError(ExportWorkerError):
    """A vendor call failed. ``code`` is short and stable; ``message`` is redacted."""

    code = "vendor_error"
    outcome_unknown: bool = False

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        status: int | None = None,
        outcome_unknown: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after
        self.status = status
        if outcome_unknown is not None:
            self.outcome_unknown = outcome_unknown


class VendorUnavailable(VendorError):
    """Transient: 5xx, 429, timeouts, connection errors. Retry later."""

    code = "vendor_unavailable"
    retriable = True


class RateLimited(VendorUnavailable):
    """429: the vendor did not act on the request; wait ``retry_after``."""

    code = "rate_limited"


class AuthFailed(VendorError):
    """Credentials refused even after one token refresh."""

    code = "auth_failed"
    retriable = True


class VendorBusy(VendorError):
    """The vendor refuses the job for now but will take it later (queue it)."""

    code = "vendor_busy"
    retriable = True


class VendorRejected(VendorError):
    """The vendor refused the job for good; the request ends FAILED. ``answer`` holds the
    refused HTTP answer when there was one (adapters may look closer, e.g. a 409)."""

    code = "vendor_rejected"
    answer: object = None


class MalformedAnswer(VendorError):
    """The vendor answered something we cannot parse (HTML error page, bad JSON)."""

    code = "malformed_answer"
    retriable = True


class AnswerTooLarge(MalformedAnswer):
    """The vendor's answer is larger than the worker reads; the rest was not read."""

    code = "answer_too_large"


class ResultTooLarge(VendorError):
    """A result is larger than the worker agrees to assemble: retrying cannot help."""

    code = "result_too_large"
    retriable = False


class RegistryUnavailable(ExportWorkerError):
    """The schema registry could not be asked (down, 5xx): retry, never dead-letter."""

    retriable = True


class ResultStoreError(ExportWorkerError):
    """Writing a collected artifact to the result store failed."""

    retriable = True


class WorkerFenced(ExportWorkerError):
    """The transactional producer was fenced and not replaced: over a transaction shorter
    than the transaction timeout (another process has this transactional id), again soon
    after a replacement, or while stopping. Stop."""


class ProducerStuck(WorkerFenced):
    """A transactional call outlived its own timeout: librdkafka's
    send_offsets_to_transaction can wait forever for a group coordinator that went away
    (confluentinc/librdkafka#5456); or a failed transaction could not be aborted. The
    producer cannot be used again and its thread may not be joinable: the process must be
    replaced (the next owner resumes from Kafka)."""
