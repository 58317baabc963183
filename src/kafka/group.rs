//! Who in the consumer group owns a partition: read from the group's member list, as Kafka
//! Streams finds the instance for an interactive query. Each instance puts the address it
//! serves queries on into its `client.id` (`allread@<address>`), so no coordination of our
//! own is needed: Kafka's group membership is the directory.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaResult;

const CLIENT_ID_PREFIX: &str = "allread@";

/// The `client.id` of an instance that serves queries on `address`.
pub fn client_id_for(address: &str) -> String {
    format!("{CLIENT_ID_PREFIX}{address}")
}

/// The query address in a member's `client.id`, if it carries one.
pub fn address_of(client_id: &str) -> Option<&str> {
    client_id.strip_prefix(CLIENT_ID_PREFIX).filter(|a| !a.is_empty())
}

/// Topic partitions in a consumer-protocol assignment (`ConsumerProtocolAssignment`, any
/// version: they all start with version, then the topic partitions). `None` if malformed.
pub fn parse_assignment(bytes: &[u8]) -> Option<Vec<(String, Vec<i32>)>> {
    struct Reader<'a>(&'a [u8]);
    impl Reader<'_> {
        fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
            let (head, rest) = self.0.split_at_checked(N)?;
            self.0 = rest;
            head.try_into().ok()
        }
        fn i16(&mut self) -> Option<i16> {
            self.take::<2>().map(i16::from_be_bytes)
        }
        fn i32(&mut self) -> Option<i32> {
            self.take::<4>().map(i32::from_be_bytes)
        }
    }
    let mut r = Reader(bytes);
    let _version = r.i16()?;
    let topics = r.i32()?;
    let mut out = Vec::new();
    for _ in 0..topics.max(0) {
        let len = usize::try_from(r.i16()?).ok()?;
        let (name, rest) = r.0.split_at_checked(len)?;
        r.0 = rest;
        let name = String::from_utf8(name.to_vec()).ok()?;
        let count = r.i32()?;
        let mut partitions = Vec::new();
        for _ in 0..count.max(0) {
            partitions.push(r.i32()?);
        }
        out.push((name, partitions));
    }
    Some(out)
}

/// The query address of the group member that owns `topic`/`partition` (`Ok(None)`: no
/// member owns it, or the owner advertises no address).
pub fn owner_address(
    client: &BaseConsumer,
    group: &str,
    topic: &str,
    partition: i32,
    timeout: Duration,
) -> KafkaResult<Option<String>> {
    let groups = client.fetch_group_list(Some(group), timeout)?;
    for g in groups.groups() {
        for member in g.members() {
            let owns = member
                .assignment()
                .and_then(parse_assignment)
                .is_some_and(|a| a.iter().any(|(t, ps)| t == topic && ps.contains(&partition)));
            if owns {
                return Ok(address_of(member.client_id()).map(str::to_string));
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment(version: i16, topics: &[(&str, &[i32])], user_data: &[u8]) -> Vec<u8> {
        let mut b = version.to_be_bytes().to_vec();
        b.extend((topics.len() as i32).to_be_bytes());
        for (t, ps) in topics {
            b.extend((t.len() as i16).to_be_bytes());
            b.extend(t.as_bytes());
            b.extend((ps.len() as i32).to_be_bytes());
            for p in *ps {
                b.extend(p.to_be_bytes());
            }
        }
        b.extend((user_data.len() as i32).to_be_bytes());
        b.extend(user_data);
        b
    }

    #[test]
    fn parses_assignments_of_every_version() {
        for version in 0..=3 {
            let bytes = assignment(version, &[("a-events-repartition", &[0, 3]), ("chatroom_1", &[0])], b"x");
            assert_eq!(
                parse_assignment(&bytes).unwrap(),
                vec![("a-events-repartition".to_string(), vec![0, 3]), ("chatroom_1".to_string(), vec![0])]
            );
        }
        assert_eq!(parse_assignment(&[0, 1, 0, 0, 0, 5]), None, "truncated");
        assert_eq!(parse_assignment(&[]), None);
    }

    #[test]
    fn client_ids_carry_the_query_address() {
        assert_eq!(address_of(&client_id_for("10.0.0.7:9464")), Some("10.0.0.7:9464"));
        assert_eq!(address_of("rdkafka"), None);
        assert_eq!(address_of("allread@"), None);
    }
}
