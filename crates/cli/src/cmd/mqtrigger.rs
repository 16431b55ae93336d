//! `kappa mqtrigger create|get|list|update|delete` (alias `mqt`): message-queue triggers.

use std::collections::BTreeMap;

use kappa_types::{FunctionReference, Kind, MessageQueueTrigger, MessageQueueTriggerSpec};

use super::{Ctx, DeleteArgs, NameArg, usage};
use crate::code::generated_name;
use crate::output::{Table, or_dash};

/// `kappa mqtrigger ...`
#[derive(Debug, Clone, clap::Subcommand)]
pub enum MqtCommand {
    /// Create a message-queue trigger: each message on a topic invokes a function.
    Create(MqtCreate),
    /// Print a message-queue trigger (YAML by default), with its status.
    Get(NameArg),
    /// List message-queue triggers with their state.
    #[command(alias = "ls")]
    List,
    /// Change the flags given; the rest stays as it is.
    Update(MqtUpdate),
    /// Delete a message-queue trigger (and its durable consumer on the broker).
    #[command(alias = "rm")]
    Delete(DeleteArgs),
}

/// `mqtrigger create`.
#[derive(Debug, Clone, clap::Args)]
pub struct MqtCreate {
    /// Write the YAML into specs/ (for `kappa spec apply`) instead of creating it.
    #[arg(long)]
    pub spec: bool,
    /// The trigger's name [default: <function>-<6 random hex>].
    #[arg(long)]
    pub name: Option<String>,
    /// The function each message is POSTed to.
    #[arg(long)]
    pub function: String,
    /// The broker: nats-jetstream, redis (Redis Streams) or kafka; Fission's other types
    /// (rabbitmq, aws-sqs-queue, ...) are refused.
    #[arg(long, default_value = "nats-jetstream")]
    pub mqtype: String,
    /// The subject (NATS), stream key (Redis) or topic (Kafka) to consume.
    #[arg(long)]
    pub topic: String,
    /// Where successful response bodies are published.
    #[arg(long)]
    pub resptopic: Option<String>,
    /// Where a message goes after its last failed attempt.
    #[arg(long)]
    pub errortopic: Option<String>,
    /// Retries after the first failed attempt.
    #[arg(long, default_value_t = 0)]
    pub maxretries: u32,
    /// Content-Type of the requests to the function.
    #[arg(short = 'c', long, default_value = "application/json")]
    pub contenttype: String,
    /// Messages processed at once; 1 keeps the order.
    #[arg(long, default_value_t = 1)]
    pub maxconcurrency: u32,
    /// Connection settings, e.g. url=nats://host:4222, stream=ORDERS, consumer=kappa
    /// (repeatable).
    #[arg(long = "metadata", value_name = "KEY=VALUE", value_parser = super::key_value)]
    pub metadata: Vec<(String, String)>,
    /// A Secret whose `url` key is the broker URL (with credentials).
    #[arg(long)]
    pub secret: Option<String>,
}

/// `mqtrigger update`.
#[derive(Debug, Clone, clap::Args)]
pub struct MqtUpdate {
    /// The trigger to change.
    #[arg(long)]
    pub name: String,
    /// The function each message is POSTed to.
    #[arg(long)]
    pub function: Option<String>,
    /// The subject (NATS), stream key (Redis) or topic (Kafka) to consume.
    #[arg(long)]
    pub topic: Option<String>,
    /// Where successful response bodies are published ("" for nowhere).
    #[arg(long)]
    pub resptopic: Option<String>,
    /// Where a message goes after its last failed attempt ("" for nowhere).
    #[arg(long)]
    pub errortopic: Option<String>,
    /// Retries after the first failed attempt.
    #[arg(long)]
    pub maxretries: Option<u32>,
    /// Content-Type of the requests to the function.
    #[arg(short = 'c', long)]
    pub contenttype: Option<String>,
    /// Messages processed at once; 1 keeps the order.
    #[arg(long)]
    pub maxconcurrency: Option<u32>,
    /// Connection settings to set (repeatable; KEY= removes the key).
    #[arg(long = "metadata", value_name = "KEY=VALUE", value_parser = super::key_value)]
    pub metadata: Vec<(String, String)>,
    /// A Secret whose `url` key is the broker URL ("" for none).
    #[arg(long)]
    pub secret: Option<String>,
}

fn non_empty(value: &Option<String>) -> Option<String> {
    value.clone().filter(|v| !v.is_empty())
}

/// The spec of a trigger created with `args`.
pub fn spec_of(args: &MqtCreate) -> MessageQueueTriggerSpec {
    MessageQueueTriggerSpec {
        functionref: FunctionReference::name(&args.function),
        message_queue_type: args.mqtype.clone(),
        topic: args.topic.clone(),
        resp_topic: non_empty(&args.resptopic),
        error_topic: non_empty(&args.errortopic),
        max_retries: args.maxretries,
        content_type: args.contenttype.clone(),
        max_concurrency: args.maxconcurrency,
        metadata: args.metadata.iter().cloned().collect::<BTreeMap<_, _>>(),
        secret: non_empty(&args.secret),
    }
}

/// Runs an `mqtrigger` subcommand.
pub async fn run(ctx: &Ctx, command: MqtCommand) -> anyhow::Result<()> {
    match command {
        MqtCommand::Create(args) => {
            super::check_name(&args.function).map_err(|_| {
                usage(format!(
                    "--function {:?} is not a function name: expected a DNS-1123 label",
                    args.function
                ))
            })?;
            if !kappa_types::MESSAGE_QUEUE_TYPES.contains(&args.mqtype.as_str()) {
                return Err(usage(format!(
                    "--mqtype: {}",
                    kappa_types::unsupported_message_queue_type(&args.mqtype)
                )));
            }
            let name = match &args.name {
                Some(name) => name.clone(),
                None => generated_name(&args.function),
            };
            super::check_name(&name)?;
            let trigger: MessageQueueTrigger = ctx.resource(&name, spec_of(&args));
            if args.spec {
                return crate::spec::write_spec(&trigger);
            }
            let created = super::create(ctx, &trigger).await?;
            super::report(ctx, Kind::MessageQueueTrigger, &name, "created", &created)
        }
        MqtCommand::Get(name) => super::get(ctx, &name, table).await,
        MqtCommand::List => super::list(ctx, table).await,
        MqtCommand::Update(args) => {
            super::check_name(&args.name)?;
            let updated = super::update::<MessageQueueTriggerSpec, _>(ctx, &args.name, |trigger| {
                let s = &mut trigger.spec;
                if let Some(function) = &args.function {
                    s.functionref = FunctionReference::name(function);
                }
                if let Some(topic) = &args.topic {
                    s.topic = topic.clone();
                }
                if args.resptopic.is_some() {
                    s.resp_topic = non_empty(&args.resptopic);
                }
                if args.errortopic.is_some() {
                    s.error_topic = non_empty(&args.errortopic);
                }
                if let Some(n) = args.maxretries {
                    s.max_retries = n;
                }
                if let Some(ct) = &args.contenttype {
                    s.content_type = ct.clone();
                }
                if let Some(n) = args.maxconcurrency {
                    s.max_concurrency = n;
                }
                for (k, v) in &args.metadata {
                    if v.is_empty() {
                        s.metadata.remove(k);
                    } else {
                        s.metadata.insert(k.clone(), v.clone());
                    }
                }
                if args.secret.is_some() {
                    s.secret = non_empty(&args.secret);
                }
                Ok(())
            })
            .await?;
            super::report(
                ctx,
                Kind::MessageQueueTrigger,
                &args.name,
                "updated",
                &updated,
            )
        }
        MqtCommand::Delete(args) => super::delete(ctx, Kind::MessageQueueTrigger, &args).await,
    }
}

/// NAME, FUNCTION, TYPE, TOPIC, RESPTOPIC, ERRORTOPIC, RETRIES, CONCURRENCY, STATE, REASON.
pub fn table(items: &[MessageQueueTrigger]) -> Table {
    let mut t = Table::new(&[
        "NAME",
        "FUNCTION",
        "TYPE",
        "TOPIC",
        "RESPTOPIC",
        "ERRORTOPIC",
        "RETRIES",
        "CONCURRENCY",
        "STATE",
        "REASON",
    ]);
    for trigger in items {
        let s = &trigger.spec;
        t.row(vec![
            trigger.metadata.name.clone(),
            s.functionref.name.clone(),
            s.message_queue_type.clone(),
            s.topic.clone(),
            or_dash(s.resp_topic.as_ref()),
            or_dash(s.error_topic.as_ref()),
            s.max_retries.to_string(),
            s.max_concurrency.to_string(),
            or_dash(Some(&trigger.status.state).filter(|v| !v.is_empty())),
            or_dash(Some(&trigger.status.reason).filter(|v| !v.is_empty())),
        ]);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use kappa_types::Spec;

    #[test]
    fn spec_from_flags() {
        let args = MqtCreate {
            name: Some("orders".into()),
            function: "hello".into(),
            mqtype: "nats-jetstream".into(),
            topic: "orders".into(),
            resptopic: Some("done".into()),
            errortopic: Some(String::new()),
            maxretries: 3,
            contenttype: "text/plain".into(),
            maxconcurrency: 8,
            metadata: vec![("url".into(), "nats://127.0.0.1:4222".into())],
            secret: None,
            spec: false,
        };
        let s = spec_of(&args);
        s.validate().unwrap();
        assert_eq!(s.resp_topic.as_deref(), Some("done"));
        assert_eq!(s.error_topic, None);
        assert_eq!(s.metadata["url"], "nats://127.0.0.1:4222");
        let out = table(&[MessageQueueTrigger::new("orders", s)]).to_string();
        assert!(
            out.contains("nats-jetstream") && out.contains("done"),
            "{out}"
        );
    }
}
