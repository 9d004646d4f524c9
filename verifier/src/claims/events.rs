//! JSON form of runtime events: `{"event": "<name>", "content": "<hex of the CEL content TLV>"}`, the exact
//! bytes the digests cover (the name is for readers and must agree with the content).

use sealroom_measurements::cel::RuntimeEvent;
use sealroom_measurements::reader::Reader;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Encoded {
    event: String,
    content: String,
}

pub fn serialize<S: Serializer>(events: &[RuntimeEvent], s: S) -> Result<S::Ok, S::Error> {
    events
        .iter()
        .map(|e| Encoded { event: e.name().to_owned(), content: hex::encode(e.encode_content()) })
        .collect::<Vec<_>>()
        .serialize(s)
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<RuntimeEvent>, D::Error> {
    use serde::de::Error;
    Vec::<Encoded>::deserialize(d)?
        .into_iter()
        .map(|e| {
            let bytes = hex::decode(&e.content).map_err(D::Error::custom)?;
            let mut r = Reader::new(&bytes);
            let event = RuntimeEvent::decode_content(&mut r).map_err(D::Error::custom)?;
            r.finish("event").map_err(D::Error::custom)?;
            if event.name() != e.event {
                return Err(D::Error::custom(format!("event {} has {} content", e.event, event.name())));
            }
            Ok(event)
        })
        .collect()
}
