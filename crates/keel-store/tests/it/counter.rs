//! A minimal aggregate for exercising the store through cqrs-es.

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Counter {
    pub value: u64,
}

#[derive(Debug)]
pub enum CounterCommand {
    Add(u64),
    /// Decides nothing: no event (an idempotent repeat).
    Touch,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum CounterEvent {
    Added { amount: u64, note: String },
}

impl DomainEvent for CounterEvent {
    fn event_type(&self) -> String {
        "Added".into()
    }
    fn event_version(&self) -> String {
        "1".into()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CounterError(String);

impl Aggregate for Counter {
    const TYPE: &'static str = "counter";
    type Command = CounterCommand;
    type Event = CounterEvent;
    type Error = CounterError;
    type Services = ();

    async fn handle(
        &mut self,
        command: CounterCommand,
        _: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), CounterError> {
        let CounterCommand::Add(amount) = command else {
            return Ok(());
        };
        if amount == 0 {
            return Err(CounterError("amount must be positive".into()));
        }
        sink.write(
            CounterEvent::Added {
                amount,
                note: "x".repeat(400),
            },
            self,
        )
        .await;
        Ok(())
    }

    fn apply(&mut self, event: CounterEvent) {
        let CounterEvent::Added { amount, .. } = event;
        self.value += amount;
    }
}
