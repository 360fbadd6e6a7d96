//! What the broker's answers to one publish call mean for each event: its confirms (ack, nack
//! or a failed confirm) and the messages it returned (`basic.return`), matched to their events
//! by `message_id`.

use std::collections::HashMap;

use crate::{
    broker::{Outcome, PublishError},
    event::OutboxEvent,
};

/// What the broker said about one message of a call: acked or nacked (by delivery tag).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Confirmed {
    /// `basic.ack`.
    Ack,
    /// `basic.nack`.
    Nack,
}

/// Outcomes of one call, given each message's confirm (`None`: the confirm failed, with the
/// error) and the `message_id`s of every message the broker returned on the call's channel,
/// whichever confirm carried them, with the broker's reply text. A returned message is
/// unroutable even when acked (the broker acks a message it could not route); a nack wins
/// over a return.
pub fn outcomes(
    events: &[&OutboxEvent],
    confirms: Vec<Result<Confirmed, PublishError>>,
    returned: &HashMap<String, String>,
    describe_return: impl Fn(&OutboxEvent, &str) -> String,
) -> Vec<Outcome> {
    events
        .iter()
        .zip(confirms)
        .map(|(event, confirm)| match confirm {
            Err(error) => Err(error),
            Ok(Confirmed::Nack) => Err(PublishError::Nacked),
            Ok(Confirmed::Ack) => match returned.get(&event.id.to_string()) {
                Some(reply) => Err(PublishError::Unroutable(describe_return(event, reply))),
                None => Ok(()),
            },
        })
        .collect()
}

/// The event ID a returned message carries as its `message_id`, with the broker's reply.
pub(super) fn returned_id(
    message: &lapin::message::BasicReturnMessage,
) -> Option<(String, String)> {
    let id = message
        .properties
        .message_id()
        .as_ref()
        .map(|m| m.to_string());
    if id.is_none() {
        tracing::warn!(
            routing_key = %message.routing_key,
            "broker returned a message without message_id; ignoring it"
        );
    }
    id.map(|id| (id, message.reply_text.to_string()))
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;

    fn event() -> OutboxEvent {
        OutboxEvent {
            id: Uuid::new_v4(),
            ..OutboxEvent::fixture()
        }
    }

    #[test]
    fn a_return_is_matched_by_message_id_not_by_the_confirm_that_carried_it() {
        // GIVEN three acked messages where the broker returned the second one
        let events = [event(), event(), event()];
        let refs: Vec<&OutboxEvent> = events.iter().collect();
        let returned = HashMap::from([(events[1].id.to_string(), "NO_ROUTE".to_owned())]);
        let confirms = vec![Ok(Confirmed::Ack), Ok(Confirmed::Ack), Ok(Confirmed::Ack)];

        // WHEN the outcomes are derived
        let got = outcomes(&refs, confirms, &returned, |_, reply| reply.to_owned());

        // THEN only the returned one is unroutable
        assert_eq!(
            got,
            vec![
                Ok(()),
                Err(PublishError::Unroutable("NO_ROUTE".into())),
                Ok(())
            ]
        );
    }

    #[test]
    fn nacks_and_confirm_errors_win_over_returns() {
        let events = [event(), event()];
        let refs: Vec<&OutboxEvent> = events.iter().collect();
        let returned: HashMap<String, String> = events
            .iter()
            .map(|e| (e.id.to_string(), "NO_ROUTE".to_owned()))
            .collect();
        let confirms = vec![Ok(Confirmed::Nack), Err(PublishError::Timeout)];
        let got = outcomes(&refs, confirms, &returned, |_, reply| reply.to_owned());
        assert_eq!(
            got,
            vec![Err(PublishError::Nacked), Err(PublishError::Timeout)]
        );
    }
}
