//! Fakes and helpers: an invoker that plays a function, an in-memory broker, and `eventually`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use kappa_core::FunctionId;
use kappa_triggers::{
    Broker, BrokerError, ConsumerSpec, Delivery, Header, Invoke, Message, Settle, Subscription,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

/// One request the fake function received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: Bytes,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
    pub fn attempt(&self) -> u32 {
        self.header("x-kappa-delivery-attempt")
            .and_then(|a| a.parse().ok())
            .unwrap_or(0)
    }
}

type Behaviour = dyn Fn(&Seen) -> (u16, String) + Send + Sync;

/// A function: answers with `behaviour`, after `delay`, counting what runs at once.
pub struct FakeFunction {
    behaviour: Box<Behaviour>,
    delay: Duration,
    pub seen: Mutex<Vec<Seen>>,
    in_flight: AtomicUsize,
    pub max_in_flight: AtomicUsize,
}

impl FakeFunction {
    pub fn new(
        delay: Duration,
        behaviour: impl Fn(&Seen) -> (u16, String) + Send + Sync + 'static,
    ) -> Arc<Self> {
        Arc::new(Self {
            behaviour: Box::new(behaviour),
            delay,
            seen: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
        })
    }

    /// Echoes the body with 200.
    pub fn echo() -> Arc<Self> {
        Self::new(Duration::ZERO, |s| {
            (200, String::from_utf8_lossy(&s.body).into_owned())
        })
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

#[async_trait]
impl Invoke for FakeFunction {
    async fn invoke(
        &self,
        _function: FunctionId,
        request: http::Request<axum::body::Body>,
    ) -> http::Response<axum::body::Body> {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let (parts, body) = request.into_parts();
        let body = http_body_util::BodyExt::collect(body)
            .await
            .unwrap()
            .to_bytes();
        let seen = Seen {
            method: parts.method.to_string(),
            path: parts.uri.to_string(),
            headers: parts
                .headers
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
                .collect(),
            body,
        };
        self.seen.lock().unwrap().push(seen.clone());
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let (status, text) = (self.behaviour)(&seen);
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        http::Response::builder()
            .status(status)
            .header("content-type", "text/plain")
            .body(axum::body::Body::from(text))
            .unwrap()
    }
}

/// What the fake broker recorded.
#[derive(Debug, Default)]
pub struct FakeLog {
    pub published: Vec<(String, Vec<Header>, Bytes)>,
    pub acked: Vec<String>,
    pub termed: Vec<String>,
    pub naks: Vec<(String, Duration)>,
}

/// An in-memory broker: publishing to the subscribed topic delivers, anything else is recorded.
#[derive(Clone, Default)]
pub struct FakeBroker {
    pub log: Arc<Mutex<FakeLog>>,
    inner: Arc<Mutex<Option<FakeSub>>>,
    next_id: Arc<AtomicUsize>,
}

#[derive(Clone)]
struct FakeSub {
    topic: String,
    tx: mpsc::UnboundedSender<(Message, OwnedSemaphorePermit)>,
    slots: Arc<Semaphore>,
}

impl FakeBroker {
    pub fn log(&self) -> std::sync::MutexGuard<'_, FakeLog> {
        self.log.lock().unwrap()
    }
    pub fn published_to(&self, topic: &str) -> Vec<(Vec<Header>, Bytes)> {
        self.log()
            .published
            .iter()
            .filter(|(t, _, _)| t == topic)
            .map(|(_, h, b)| (h.clone(), b.clone()))
            .collect()
    }
}

#[async_trait]
impl Broker for FakeBroker {
    async fn subscribe(&self, spec: &ConsumerSpec) -> Result<Box<dyn Subscription>, BrokerError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let sub = FakeSub {
            topic: spec.topic.clone(),
            tx,
            slots: Arc::new(Semaphore::new(spec.max_in_flight as usize)),
        };
        *self.inner.lock().unwrap() = Some(sub.clone());
        Ok(Box::new(FakeSubscription {
            rx,
            broker: self.clone(),
        }))
    }

    async fn publish(
        &self,
        topic: &str,
        headers: &[Header],
        body: Bytes,
    ) -> Result<(), BrokerError> {
        let sub = self.inner.lock().unwrap().clone();
        match sub {
            Some(sub) if sub.topic == topic => {
                let id = self.next_id.fetch_add(1, Ordering::SeqCst).to_string();
                let permit = Arc::clone(&sub.slots).acquire_owned().await.unwrap();
                let _ = sub.tx.send((
                    Message {
                        topic: topic.into(),
                        id,
                        headers: headers.to_vec(),
                        body,
                        attempt: 1,
                    },
                    permit,
                ));
            }
            _ => self
                .log()
                .published
                .push((topic.to_string(), headers.to_vec(), body)),
        }
        Ok(())
    }

    async fn remove(&self, _spec: &ConsumerSpec) -> Result<(), BrokerError> {
        Ok(())
    }
}

struct FakeSubscription {
    rx: mpsc::UnboundedReceiver<(Message, OwnedSemaphorePermit)>,
    broker: FakeBroker,
}

#[async_trait]
impl Subscription for FakeSubscription {
    async fn next(&mut self) -> Result<Delivery, BrokerError> {
        let (message, permit) = self
            .rx
            .recv()
            .await
            .ok_or_else(|| BrokerError::Receive("closed".into()))?;
        let settle = FakeSettle {
            broker: self.broker.clone(),
            message: message.clone(),
            permit,
        };
        Ok(Delivery::new(message, Box::new(settle)))
    }
}

struct FakeSettle {
    broker: FakeBroker,
    message: Message,
    permit: OwnedSemaphorePermit,
}

#[async_trait]
impl Settle for FakeSettle {
    async fn ack(self: Box<Self>) -> Result<(), BrokerError> {
        self.broker.log().acked.push(self.message.id.clone());
        Ok(())
    }
    async fn nak(self: Box<Self>, delay: Duration) -> Result<(), BrokerError> {
        self.broker
            .log()
            .naks
            .push((self.message.id.clone(), delay));
        let sub = self.broker.inner.lock().unwrap().clone();
        let FakeSettle {
            mut message,
            permit,
            ..
        } = *self;
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            message.attempt += 1;
            if let Some(sub) = sub {
                let _ = sub.tx.send((message, permit));
            }
        });
        Ok(())
    }
    async fn term(self: Box<Self>) -> Result<(), BrokerError> {
        self.broker.log().termed.push(self.message.id.clone());
        Ok(())
    }
}

/// A target for function `fn` of trigger `t` in `default`.
pub fn target(max_retries: u32, max_concurrency: u32) -> kappa_triggers::Target {
    kappa_triggers::Target {
        namespace: "default".into(),
        trigger: "t".into(),
        function: FunctionId::new("default", "fn"),
        resp_topic: Some("done".into()),
        error_topic: Some("failed".into()),
        max_retries,
        content_type: "application/json".into(),
        max_concurrency,
        invoke_timeout: Duration::from_secs(30),
        messaging_system: "nats".into(),
    }
}

/// Fast backoff for tests.
pub fn fast_config() -> kappa_triggers::DispatchConfig {
    kappa_triggers::DispatchConfig {
        backoff: kappa_triggers::Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(400),
        },
        ..kappa_triggers::DispatchConfig::default()
    }
}

pub fn header<'a>(headers: &'a [Header], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}
