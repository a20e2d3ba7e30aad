//! The `pushdown` scenario.

use super::*;

/// `pushdown`: a replay from the start that wants one resource out of many subjects, once with
/// the resource's subject pattern (pushed down: JetStream filters the catch-up read) and once
/// with the same selection as an attribute filter (the gateway reads and examines every event).
/// Both run until a bookmark shows the whole stream was covered.
pub(super) async fn run(o: &Options) -> Result<Vec<Row>> {
    let resources = o.scaled(100_000, 1_000);
    let env = Env::start().await?;
    let data = payload(SMALL_EVENT_BYTES);
    within(
        "publishing resources",
        RawPublisher::new(&env.js, GATEWAY_STREAM)?.publish(resources, None, |i| {
            BenchEvent::new("push", i, resources, &data)
        }),
    )
    .await?;
    let last = resources as u64;
    let target = format!("r{}", resources / 2);
    let channel = env.gateway.channel().await?;
    let pushed = api::Open {
        subjects: vec![format!("{GATEWAY_STREAM}.bench._.{target}")],
        ..Default::default()
    };
    let filtered = api::Open {
        filter: Some(api::Filter {
            filter: Some(api::filter::Filter::Exact(api::AttributeMap {
                attributes: [("subject".to_string(), target.clone())].into(),
            })),
        }),
        ..Default::default()
    };
    let mut rows = Vec::new();
    for (name, open) in [
        ("subject pattern (pushed down)", pushed),
        ("attribute filter", filtered),
    ] {
        let open = api::Open {
            start: Some(api::StartPosition {
                position: Some(Position::Earliest(())),
            }),
            heartbeat: Some(prost_types::Duration {
                seconds: 0,
                nanos: 100_000_000,
            }),
            ..open
        };
        let started = Instant::now();
        let mut stream = SubscriberClient::new(channel.clone())
            .watch(open)
            .await?
            .into_inner();
        let mut delivered = 0;
        within("the replay", async {
            loop {
                match stream.message().await?.context("the Watch ended")?.response {
                    Some(Response::Delivery(_)) => delivered += 1,
                    Some(Response::Bookmark(b)) if b.sequence >= last => return Ok(()),
                    _ => {}
                }
            }
        })
        .await?;
        ensure!(
            delivered == 1,
            "{name}: {delivered} deliveries for one resource"
        );
        let millis = started.elapsed().as_secs_f64() * 1000.0;
        println!("{name}: one resource out of {resources} subjects in {millis:.1} ms");
        rows.push(Row::new(
            format!("pushdown: {name}, {resources} subjects"),
            Figure::Millis(millis),
        ));
    }
    Ok(rows)
}
