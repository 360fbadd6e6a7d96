//! What SQS's answers mean for each event: per-entry results of SendMessageBatch (success,
//! the sender's fault, SQS's fault) and the classification of a whole call that failed
//! (the request's content, or SQS being unreachable, throttling or failing on its side).

use std::collections::BTreeMap;

use aws_sdk_sqs::{
    error::{DisplayErrorContext, ProvideErrorMetadata, SdkError},
    operation::send_message_batch::SendMessageBatchOutput,
};

use crate::broker::{Outcome, PublishError};

/// Whole-call error codes that mean "this request's content is wrong": the entries are
/// sent again one by one so that only the offending event is blamed. Codes are compared
/// without the `AWS.SimpleQueueService.` prefix the query-compatible protocol may add.
const CONTENT_ERRORS: &[&str] = &[
    "BatchRequestTooLong",
    "BatchEntryIdsNotDistinct",
    "EmptyBatchRequest",
    "InvalidBatchEntryId",
    "TooManyEntriesInBatchRequest",
    "InvalidParameterValue",
    "InvalidMessageContents",
    "InvalidAttributeName",
    "InvalidAttributeValue",
    "MissingParameter",
];

/// How a failed SendMessageBatch call as a whole is handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallFailure {
    /// SQS refused the request for its content: split it, or blame the single entry.
    Content(String),
    /// SQS is unreachable, throttles, fails on its side, or refuses the caller (credentials,
    /// permissions, KMS, a missing queue): pause publishing; no event is to blame.
    Unavailable(String),
}

/// Classifies a whole-call failure by its error code (see [`classify_code`]).
pub fn classify<E, R>(error: &SdkError<E, R>) -> CallFailure
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let detail = describe(error);
    match error {
        SdkError::ServiceError(_) if classify_code(error.code()) => CallFailure::Content(detail),
        _ => CallFailure::Unavailable(detail),
    }
}

/// Whether a whole-call error code blames the request's content (see `CONTENT_ERRORS`).
/// Anything else (throttling, `InternalError`, `AccessDenied`, KMS errors,
/// `NonExistentQueue`, no code at all) is not the events' fault.
pub fn classify_code(code: Option<&str>) -> bool {
    code.map(|c| c.trim_start_matches("AWS.SimpleQueueService."))
        .is_some_and(|c| CONTENT_ERRORS.contains(&c))
}

/// `code: message` of a service error, or the error chain of a transport failure.
pub fn describe<E, R>(error: &SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match (error.code(), error.message()) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code.to_owned(),
        _ => match error {
            SdkError::TimeoutError(_) => "SQS request timed out".to_owned(),
            SdkError::DispatchFailure(_) => {
                format!("cannot reach SQS: {}", DisplayErrorContext(error))
            }
            other => DisplayErrorContext(other).to_string(),
        },
    }
}

/// Maps SendMessageBatch's per-entry results onto the entries' indices (entry IDs are the
/// indices): success, a failure SQS blames on the sender (permanent:
/// [`PublishError::Rejected`] with SQS's code and message), or any other failure
/// ([`PublishError::Transient`]). An entry missing from both lists is transient.
pub fn entry_outcomes(indices: &[usize], output: &SendMessageBatchOutput) -> Vec<(usize, Outcome)> {
    let mut results: BTreeMap<usize, Outcome> = BTreeMap::new();
    for ok in output.successful() {
        if let Ok(i) = ok.id().parse() {
            results.insert(i, Ok(()));
        }
    }
    for failed in output.failed() {
        if let Ok(i) = failed.id().parse() {
            let reason = format!(
                "{}: {}",
                failed.code(),
                failed.message().unwrap_or("no message")
            );
            results.insert(
                i,
                Err(if failed.sender_fault() {
                    PublishError::Rejected(reason)
                } else {
                    PublishError::Transient(reason)
                }),
            );
        }
    }
    indices
        .iter()
        .map(|i| {
            let outcome = results
                .remove(i)
                .unwrap_or_else(|| Err(PublishError::Transient("no result for entry".into())));
            (*i, outcome)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use aws_sdk_sqs::types::{BatchResultErrorEntry, SendMessageBatchResultEntry};

    use super::*;

    #[test]
    fn per_entry_results_are_classified_one_by_one() {
        let output = SendMessageBatchOutput::builder()
            .successful(
                SendMessageBatchResultEntry::builder()
                    .id("4")
                    .message_id("m")
                    .md5_of_message_body("x")
                    .build()
                    .unwrap(),
            )
            .failed(
                BatchResultErrorEntry::builder()
                    .id("5")
                    .sender_fault(true)
                    .code("InvalidParameterValue")
                    .message("bad attribute")
                    .build()
                    .unwrap(),
            )
            .failed(
                BatchResultErrorEntry::builder()
                    .id("6")
                    .sender_fault(false)
                    .code("InternalError")
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let got = entry_outcomes(&[4, 5, 6, 7], &output);
        assert_eq!(got[0], (4, Ok(())));
        assert_eq!(
            got[1],
            (
                5,
                Err(PublishError::Rejected(
                    "InvalidParameterValue: bad attribute".into()
                ))
            )
        );
        assert!(
            matches!(&got[2], (6, Err(PublishError::Transient(r))) if r.starts_with("InternalError"))
        );
        assert!(matches!(&got[3], (7, Err(PublishError::Transient(_)))));
    }

    #[test]
    fn only_content_codes_blame_the_request() {
        for code in [
            "AWS.SimpleQueueService.BatchRequestTooLong",
            "BatchRequestTooLong",
            "InvalidParameterValue",
            "InvalidMessageContents",
            "AWS.SimpleQueueService.TooManyEntriesInBatchRequest",
        ] {
            assert!(classify_code(Some(code)), "{code}");
        }
        for code in [
            "RequestThrottled",
            "ThrottlingException",
            "InternalError",
            "ServiceUnavailable",
            "AccessDenied",
            "KMS.ThrottlingException",
            "KMS.AccessDeniedException",
            "AWS.SimpleQueueService.NonExistentQueue",
            "InvalidAddress",
            "InvalidSecurity",
            "InvalidClientTokenId",
        ] {
            assert!(!classify_code(Some(code)), "{code}");
        }
        assert!(!classify_code(None));
    }
}
