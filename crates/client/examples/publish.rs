//! Publishes one event, then a batch pipelined over one stream.
//!
//! `cargo run -p jetwatch-client --example publish` (with `jetwatch dev` running; set
//! `JETWATCH_SERVER` for another gateway).

use jetwatch_client::{AttributeValue, Data, Event, Publisher};

fn widget(id: &str, ty: &str, name: &str) -> Event {
    let mut event = Event {
        id: id.to_owned(),
        source: "/examples/widgets".to_owned(),
        spec_version: jetwatch_client::event::SPEC_VERSION.to_owned(),
        ty: ty.to_owned(),
        data: Some(Data::Text(format!("{{\"name\":\"{name}\"}}"))),
        ..Event::default()
    };
    event
        .set("subject", AttributeValue::String(name.to_owned()))
        .set(
            "datacontenttype",
            AttributeValue::String("application/json".into()),
        );
    event
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = std::env::var("JETWATCH_SERVER").unwrap_or_else(|_| "127.0.0.1:50051".into());
    let mut publisher = Publisher::connect(server).await?;

    // One event; publishing it again within the stream's duplicate window stores nothing.
    let stored = publisher
        .publish(
            "",
            &widget("w1-created", "com.example.widget.created", "w1"),
        )
        .await?;
    println!(
        "stored at sequence {} on {}",
        stored.sequence, stored.subject
    );

    // Many events over one stream: each gets its own result, in order.
    let batch: Vec<Event> = (0..100)
        .map(|i| {
            widget(
                &format!("w{i}-modified"),
                "com.example.widget.modified",
                &format!("w{i}"),
            )
        })
        .collect();
    let results = publisher.publish_all("", &batch).await?;
    let refused = results.iter().filter(|r| r.is_err()).count();
    println!("{} stored, {refused} refused", results.len() - refused);
    Ok(())
}
