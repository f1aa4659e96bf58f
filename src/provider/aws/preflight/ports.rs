//! A cluster's security groups against the ports its machines must reach one another on:
//! which of those ports no inbound rule opens to the machines themselves, read from the
//! DescribeSecurityGroups and DescribeSubnets answers the preflight already has.

use aws_sdk_ec2::types::IpPermission;

use crate::plan::Ports;

/// The `ports` that none of `rules` (the inbound rules of a test's security groups) opens to
/// the test's own machines for TCP: a rule counts from one of `groups` (the machines carry
/// them all), from a CIDR block holding every one of `subnets` (the CIDR blocks the machines
/// may launch in; unknown: `None`), or from anywhere; a range counts when rules cover all of it.
pub(super) fn missing_ports<'p>(
    rules: &[&IpPermission],
    groups: &[&str],
    subnets: Option<&[&str]>,
    ports: &'p [Ports],
) -> Vec<&'p Ports> {
    let from_us = |r: &IpPermission| {
        (r.user_id_group_pairs().iter()).any(|p| p.group_id().is_some_and(|g| groups.contains(&g)))
            || (r.ip_ranges().iter())
                .filter_map(|ip| ip.cidr_ip())
                .any(|cidr| {
                    cidr_holds(cidr, "0.0.0.0/0")
                        || subnets
                            .is_some_and(|s| !s.is_empty() && s.iter().all(|s| cidr_holds(cidr, s)))
                })
    };
    let mut open: Vec<(u32, u32)> = (rules.iter())
        .filter(|r| from_us(r))
        .filter_map(|r| match r.ip_protocol()? {
            "-1" => Some((0, u32::from(u16::MAX))),
            "tcp" | "6" => Some((
                u32::try_from(r.from_port()?).ok()?,
                u32::try_from(r.to_port()?).ok()?,
            )),
            _ => None,
        })
        .collect();
    open.sort_unstable();
    let covered = |p: &Ports| {
        let (mut next, end) = (u32::from(*p.range.start()), u32::from(*p.range.end()));
        for &(from, to) in &open {
            if from <= next && to >= next {
                next = to + 1;
            }
        }
        next > end
    };
    ports.iter().filter(|p| !covered(p)).collect()
}

/// Whether the IPv4 CIDR block `outer` holds all of `inner`; anything unreadable holds nothing.
fn cidr_holds(outer: &str, inner: &str) -> bool {
    let parse = |cidr: &str| -> Option<(u32, u32)> {
        let (ip, len) = cidr.split_once('/')?;
        let ip: std::net::Ipv4Addr = ip.parse().ok()?;
        let len: u32 = len.parse().ok().filter(|&l| l <= 32)?;
        Some((u32::from(ip), len))
    };
    let (Some((outer, o_len)), Some((inner, i_len))) = (parse(outer), parse(inner)) else {
        return false;
    };
    let mask = u32::MAX.checked_shl(32 - o_len).unwrap_or(0);
    o_len <= i_len && outer & mask == inner & mask
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_port_is_open_from_the_group_itself_a_cidr_holding_the_subnets_or_anywhere() {
        use aws_sdk_ec2::types::{IpRange, UserIdGroupPair};
        let rule = |protocol: &str, from: i32, to: i32| {
            IpPermission::builder()
                .ip_protocol(protocol)
                .from_port(from)
                .to_port(to)
        };
        let from_group = |r: aws_sdk_ec2::types::builders::IpPermissionBuilder, g: &str| {
            r.user_id_group_pairs(UserIdGroupPair::builder().group_id(g).build())
                .build()
        };
        let from_cidr = |r: aws_sdk_ec2::types::builders::IpPermissionBuilder, c: &str| {
            r.ip_ranges(IpRange::builder().cidr_ip(c).build()).build()
        };
        let ports = [
            Ports {
                range: 9200..=9200,
                what: "http",
            },
            Ports {
                range: 1900..=1900,
                what: "actor",
            },
            Ports {
                range: crate::plan::Cluster::ACTOR_PORTS,
                what: "actors",
            },
        ];
        let groups = ["sg-a", "sg-b"];
        let subnets = ["10.0.1.0/24", "10.0.2.0/24"];
        let missing = |rules: &[IpPermission], subnets: Option<&[&str]>| -> Vec<&str> {
            let rules: Vec<&IpPermission> = rules.iter().collect();
            (missing_ports(&rules, &groups, subnets, &ports).iter())
                .map(|p| p.what)
                .collect()
        };
        let all = vec!["http", "actor", "actors"];
        let known = Some(&subnets[..]);

        assert_eq!(missing(&[], known), all);
        // All traffic from the group itself (the default group's rule), from the other group.
        assert!(missing(&[from_group(rule("-1", -1, -1), "sg-a")], known).is_empty());
        assert!(missing(&[from_group(rule("-1", -1, -1), "sg-b")], known).is_empty());
        assert_eq!(
            missing(&[from_group(rule("-1", -1, -1), "sg-other")], known),
            all
        );
        // Ranges: each port's whole range must be open, across rules.
        let tcp_self = |from, to| from_group(rule("tcp", from, to), "sg-a");
        assert_eq!(
            missing(&[tcp_self(9200, 9300), tcp_self(1900, 1900)], known),
            ["actors"]
        );
        assert_eq!(
            missing(&[tcp_self(9200, 9200), tcp_self(32768, 50000)], known),
            ["actor", "actors"]
        );
        assert!(
            missing(
                &[
                    tcp_self(1900, 1900),
                    tcp_self(9200, 9200),
                    tcp_self(40000, 60999),
                    tcp_self(32768, 40000),
                ],
                known
            )
            .is_empty()
        );
        assert!(missing(&[from_group(rule("6", 1024, 65535), "sg-a")], known).is_empty());
        // UDP opens nothing a cluster uses.
        assert_eq!(
            missing(&[from_group(rule("udp", 0, 65535), "sg-a")], known),
            all
        );
        // A CIDR block counts when it holds every subnet the machines may launch in.
        let cidr = |c| from_cidr(rule("tcp", 1024, 65535), c);
        assert!(missing(&[cidr("10.0.0.0/16")], known).is_empty());
        assert_eq!(missing(&[cidr("10.0.1.0/24")], known), all);
        assert_eq!(missing(&[cidr("10.1.0.0/16")], known), all);
        assert_eq!(missing(&[cidr("10.0.0.0/16")], None), all);
        // From anywhere holds every subnet, known or not.
        assert!(missing(&[cidr("0.0.0.0/0")], None).is_empty());
        assert!(missing(&[from_cidr(rule("-1", -1, -1), "0.0.0.0/0")], known).is_empty());

        assert!(cidr_holds("127.0.0.0/16", "127.0.7.0/24"));
        assert!(!cidr_holds("127.0.7.0/24", "127.0.0.0/16"));
        assert!(cidr_holds("10.0.1.0/24", "10.0.1.0/24"));
        assert!(!cidr_holds("not a cidr", "10.0.1.0/24"));
    }
}
