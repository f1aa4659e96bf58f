//! Before planning: what the plan's aws tests name, checked against the account, as Terraform
//! refreshes before it plans. Each finding is a [`Problem`] that `plan` places at the plan
//! file's line and column, so nothing is paid for before the plan could launch.
//!
//! By job: this file looks the account up ([`Account`]) and checks each test against it;
//! [`quota`] reads the region's vCPU quota; [`ports`] checks a cluster's security groups;
//! [`dry_run`](mod@dry_run) asks EC2 whether each launch would be taken; [`cost_facts`]
//! answers the cost estimate.

use std::collections::{BTreeMap, HashMap, HashSet};

use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_ec2::types::{InstanceType, IpPermission, LocationType};

use super::instances::LaunchRequest;
use super::{
    FILTER_VALUES, TAG_ATTEMPT, TAG_LINEAGE, TAG_RUN, TAG_TEST, TAG_WORKSPACE, check_credentials,
    err, id_filter,
};
use crate::plan::{AwsSettings, Connect, Market, Placement, Ports, Subnets};
use crate::provider::{Limit, Preflight, Problem, ProviderError};

mod cost_facts;
mod dry_run;
mod ports;
mod quota;
pub use cost_facts::CostFacts;
use dry_run::{dry_run, dry_run_group};
use ports::missing_ports;
use quota::standard_quota;
pub(super) use quota::{STANDARD_QUOTA_NAME, is_standard};

/// One aws test as the preflight checks it: its settings, and the ports its machines must reach
/// one another on (a cluster's; none for a test of one machine).
pub struct Checked<'a> {
    pub settings: &'a AwsSettings,
    pub ports: Vec<Ports>,
}

/// Checks what aws tests name against the account before anything is launched, as Terraform
/// refreshes before it plans: AMIs, subnets and security groups exist in their region, the
/// instance type is offered in a zone the test may launch in, `connect = "public_ip"` has a
/// subnet that gives instances a public address, and a test without a subnet has a default
/// VPC; the AMI's architecture is one the instance type runs; and a dry run of each distinct
/// launch (RunInstances with `DryRun`) says EC2 would take it, permissions included, and so
/// does one of making each kind of placement group the region's tests launch into; a placed
/// test's subnets lie in one zone; a cluster's security groups let its machines reach one
/// another on its ports. Lookups are batched per region and by filter, so that one missing id
/// does not hide the others.
/// Each region's running On-Demand vCPU quota comes back as a [`Limit`], with the vCPUs each
/// test's instance takes of it.
pub async fn preflight(checked: &[Checked<'_>]) -> Result<Preflight, ProviderError> {
    check_credentials().await?;
    // A plan should not hang on an unreachable API: fewer attempts than apply's calls.
    let base = aws_config::defaults(BehaviorVersion::latest())
        .retry_config(RetryConfig::standard().with_max_attempts(3))
        .load()
        .await;
    let mut by_region: BTreeMap<&str, Vec<&Checked<'_>>> = BTreeMap::new();
    for c in checked {
        by_region.entry(&c.settings.region).or_default().push(c);
    }
    let mut found = Preflight::default();
    let problems = &mut found.problems;
    for (region, tests) in by_region {
        let ec2 = aws_sdk_ec2::Client::from_conf(
            aws_sdk_ec2::config::Builder::from(&base)
                .region(Region::new(region.to_owned()))
                .build(),
        );
        let settings: Vec<&AwsSettings> = tests.iter().map(|c| c.settings).collect();
        let account = Account::look_up(&ec2, region, &settings).await?;
        let mut launches = BTreeMap::new();
        for c in &tests {
            let s = c.settings;
            // Not a launch EC2 refuses: its dry run is made all the same.
            problems.extend(account.unreachable(s, &c.ports));
            let wrong = account.problems(region, s);
            // A launch already known to fail would only fail its dry run again.
            if wrong.is_empty() {
                for launch in account.launches(region, s) {
                    launches.entry(launch.key()).or_insert((launch, s));
                }
            }
            problems.extend(wrong);
        }
        for (launch, s) in launches.into_values() {
            problems.extend(dry_run(&base, &ec2, &launch, s).await?);
        }
        let mut placements: Vec<Placement> = (tests.iter())
            .filter_map(|c| c.settings.placement_group)
            .collect();
        placements.sort();
        placements.dedup();
        for placement in placements {
            problems.extend(dry_run_group(&base, &ec2, region, placement).await?);
        }
        let takes: Vec<u64> = checked
            .iter()
            .map(|c| match &*c.settings.region == region {
                true => account.standard_vcpus(c.settings),
                false => 0,
            })
            .collect();
        if takes.iter().any(|&t| t > 0) {
            match standard_quota(&base, &ec2, region, &account).await? {
                Ok((quota, in_use)) => found.limits.push(Limit {
                    name: format!("{region}'s {STANDARD_QUOTA_NAME}"),
                    unit: "vCPUs",
                    quota,
                    in_use,
                    takes,
                }),
                Err(why) => found.unchecked.push(why),
            }
        }
    }
    found
        .problems
        .sort_by(|a, b| (a.keys, &a.value, &a.message).cmp(&(b.keys, &b.value, &b.message)));
    found.problems.dedup();
    Ok(found)
}

/// What one region of the account holds of what the plan names.
struct Account {
    /// Image id: its architecture (`x86_64`, `arm64`, ...).
    images: HashMap<String, Option<String>>,
    /// What EC2 says of each instance type the tests name that it offers.
    types: HashMap<String, TypeInfo>,
    /// Subnet id: its zone and whether it gives instances a public address.
    subnets: HashMap<String, (String, bool)>,
    /// Subnet id: its IPv4 CIDR block.
    cidrs: HashMap<String, String>,
    /// Security group id: its inbound rules.
    groups: HashMap<String, Vec<IpPermission>>,
    /// (instance type, zone or region) pairs EC2 offers.
    offered: HashSet<(String, String)>,
    /// Whether the region has a default VPC, where instances without a subnet go; asked only
    /// when a test names no subnet.
    default_vpc: bool,
    /// The default VPC's IPv4 CIDR block, which holds its default subnets.
    default_vpc_cidr: Option<String>,
}

impl Account {
    async fn look_up(
        ec2: &aws_sdk_ec2::Client,
        region: &str,
        tests: &[&AwsSettings],
    ) -> Result<Account, ProviderError> {
        let unique = |ids: Vec<&str>| {
            let mut ids: Vec<String> = ids.into_iter().map(str::to_owned).collect();
            ids.sort();
            ids.dedup();
            ids
        };
        let mut account = Account {
            images: HashMap::new(),
            types: HashMap::new(),
            subnets: HashMap::new(),
            cidrs: HashMap::new(),
            groups: HashMap::new(),
            offered: HashSet::new(),
            default_vpc: true,
            default_vpc_cidr: None,
        };
        if tests.iter().any(|s| s.subnets == Subnets::Default) {
            let out = ec2
                .describe_vpcs()
                .filters(id_filter("is-default", &["true".to_owned()]))
                .send()
                .await
                .map_err(|e| err("DescribeVpcs", region, e))?;
            account.default_vpc = !out.vpcs().is_empty();
            account.default_vpc_cidr = (out.vpcs().first())
                .and_then(|v| v.cidr_block())
                .map(str::to_owned);
        }
        for ids in unique(tests.iter().map(|s| s.named_ami()).collect()).chunks(FILTER_VALUES) {
            let out = ec2
                .describe_images()
                .filters(id_filter("image-id", ids))
                // EC2 leaves deprecated images out of a filtered answer, yet launches them.
                .include_deprecated(true)
                .send()
                .await
                .map_err(|e| err("DescribeImages", region, e))?;
            account.images.extend(out.images().iter().filter_map(|i| {
                Some((
                    i.image_id()?.to_owned(),
                    i.architecture().map(|a| a.as_str().to_owned()),
                ))
            }));
        }
        let subnet_ids = unique(
            tests
                .iter()
                .flat_map(|s| s.subnets.candidates())
                .flatten()
                .collect(),
        );
        for ids in subnet_ids.chunks(FILTER_VALUES) {
            let mut pages = ec2
                .describe_subnets()
                .filters(id_filter("subnet-id", ids))
                .into_paginator()
                .send();
            while let Some(page) = pages.next().await {
                for subnet in page
                    .map_err(|e| err("DescribeSubnets", region, e))?
                    .subnets()
                {
                    if let (Some(id), Some(zone)) = (subnet.subnet_id(), subnet.availability_zone())
                    {
                        let public = subnet.map_public_ip_on_launch().unwrap_or(false);
                        if let Some(cidr) = subnet.cidr_block() {
                            account.cidrs.insert(id.to_owned(), cidr.to_owned());
                        }
                        account
                            .subnets
                            .insert(id.to_owned(), (zone.to_owned(), public));
                    }
                }
            }
        }
        let group_ids = unique(
            tests
                .iter()
                .flat_map(|s| s.security_group_ids.iter().map(|g| &**g))
                .collect(),
        );
        for ids in group_ids.chunks(FILTER_VALUES) {
            let mut pages = ec2
                .describe_security_groups()
                .filters(id_filter("group-id", ids))
                .into_paginator()
                .send();
            while let Some(page) = pages.next().await {
                account.groups.extend(
                    page.map_err(|e| err("DescribeSecurityGroups", region, e))?
                        .security_groups()
                        .iter()
                        .filter_map(|g| {
                            Some((g.group_id()?.to_owned(), g.ip_permissions().to_vec()))
                        }),
                );
            }
        }
        let types = unique(tests.iter().map(|s| &*s.instance_type).collect());
        let zones = unique(account.subnets.values().map(|(z, _)| z.as_str()).collect());
        for (location_type, locations) in [
            (LocationType::AvailabilityZone, zones),
            (LocationType::Region, vec![region.to_owned()]),
        ] {
            if locations.is_empty() {
                continue;
            }
            let mut pages = ec2
                .describe_instance_type_offerings()
                .location_type(location_type)
                .filters(id_filter("location", &locations))
                .filters(id_filter("instance-type", &types))
                .into_paginator()
                .send();
            while let Some(page) = pages.next().await {
                for o in page
                    .map_err(|e| err("DescribeInstanceTypeOfferings", region, e))?
                    .instance_type_offerings()
                {
                    if let (Some(t), Some(l)) = (o.instance_type(), o.location()) {
                        account
                            .offered
                            .insert((t.as_str().to_owned(), l.to_owned()));
                    }
                }
            }
        }
        // Only types offered somewhere: EC2 fails the whole call on a type it does not know.
        let offered = unique(account.offered.iter().map(|(t, _)| t.as_str()).collect());
        account.types = instance_types(ec2, region, &offered).await?;
        Ok(account)
    }

    fn problems(&self, region: &str, s: &AwsSettings) -> Vec<Problem> {
        let mut out = Vec::new();
        let problem = |keys, value: &str, message: String| Problem {
            keys,
            value: value.to_owned(),
            message,
        };
        let ami = s.named_ami();
        let arch = self.images.get(ami);
        if arch.is_none() {
            out.push(problem(
                if s.base_ami.is_some() {
                    &["base_ami"]
                } else {
                    &["ami"]
                },
                ami,
                format!("AMI {ami} does not exist in {region}, or this account may not use it"),
            ));
        }
        for g in s
            .security_group_ids
            .iter()
            .filter(|g| !self.groups.contains_key(&***g))
        {
            out.push(problem(
                &["security_group_ids"],
                g,
                format!("security group {g} does not exist in {region}"),
            ));
        }
        let mut zones = Vec::new();
        for id in s.subnets.candidates().into_iter().flatten() {
            match self.subnets.get(id) {
                None => out.push(problem(
                    SUBNET_KEYS,
                    id,
                    format!("subnet {id} does not exist in {region}"),
                )),
                Some((zone, public)) => {
                    // A placement group lies in the zone of its first instance; EC2 refuses
                    // the others anywhere else, a launch retried in the next subnet included.
                    if s.placement_group.is_some()
                        && let Some((first, first_zone)) = zones.first()
                        && first_zone != zone
                    {
                        out.push(problem(
                            SUBNET_KEYS,
                            id,
                            format!("subnet {id} is in {zone} but {first} in {first_zone}: a placement group lies in one Availability Zone, so the subnets of a test with `placement_group` must all be in one"),
                        ));
                    }
                    zones.push((id, zone.as_str()));
                    if !public && s.connect == Connect::PublicIp {
                        out.push(problem(
                            SUBNET_KEYS,
                            id,
                            format!("subnet {id} gives instances no public address, but connect = \"public_ip\" (the default when unset) needs one: set connect = \"private_ip\", or use a subnet that maps public addresses"),
                        ));
                    }
                }
            }
        }
        let offered = |location: &str| {
            self.offered
                .contains(&(s.instance_type.to_string(), location.to_owned()))
        };
        if s.subnets == Subnets::Default && !self.default_vpc {
            out.push(problem(
                &["region"],
                region,
                format!("{region} has no default VPC, so an instance without a subnet cannot launch: set `subnet_id` or `subnet_ids`"),
            ));
        }
        let type_offered = match s.subnets {
            Subnets::Default => offered(region),
            // Missing subnets are reported above; the type is checked where the others are.
            _ => zones.is_empty() || zones.iter().any(|(_, z)| offered(z)),
        };
        if !type_offered {
            let place = if zones.is_empty() {
                region.to_owned()
            } else {
                (zones.iter())
                    .map(|(_, z)| *z)
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            out.push(problem(
                &["instance_type"],
                &s.instance_type,
                format!(
                    "instance type {} is not offered in {place}",
                    s.instance_type
                ),
            ));
        }
        if let (Some(Some(arch)), Some(TypeInfo { archs: runs, .. })) =
            (arch, self.types.get(&*s.instance_type))
            && !runs.contains(arch)
        {
            out.push(problem(
                &["instance_type"],
                &s.instance_type,
                format!(
                    "AMI {ami} is built for {arch}, but instance type {} runs {}: EC2 would refuse the launch; pick an AMI and an instance type of one architecture",
                    s.instance_type,
                    runs.join(", ")
                ),
            ));
        }
        out
    }

    /// The `ports` that `s`'s security groups do not let its machines reach one another on, as
    /// a problem naming the rule to add. Not checked: a test that names no group (its VPC's
    /// default group, which lets its members in unless edited) or a group that does not exist
    /// (reported as such).
    fn unreachable(&self, s: &AwsSettings, ports: &[Ports]) -> Option<Problem> {
        let groups: Vec<&str> = s.security_group_ids.iter().map(|g| &**g).collect();
        if ports.is_empty() || groups.is_empty() {
            return None;
        }
        let mut rules = Vec::new();
        for g in &groups {
            rules.extend(self.groups.get(*g)?);
        }
        // Every subnet the machines may launch in; unknown: of CIDR rules, only 0.0.0.0/0 counts.
        let subnets: Option<Vec<&str>> = (s.subnets.candidates().into_iter())
            .map(|subnet| match subnet {
                Some(id) => self.cidrs.get(id).map(|c| &**c),
                None => self.default_vpc_cidr.as_deref(),
            })
            .collect();
        let missing = missing_ports(&rules, &groups, subnets.as_deref(), ports);
        if missing.is_empty() {
            return None;
        }
        let tcp = |p: &Ports| match (p.range.start(), p.range.end()) {
            (a, b) if a == b => format!("TCP {a}"),
            (a, b) => format!("TCP {a}-{b}"),
        };
        let first = groups[0];
        Some(Problem {
            keys: &["security_group_ids"],
            value: first.to_owned(),
            message: format!(
                "a cluster's machines must reach one another, but security group{} {} {} not let them in on {}: add an inbound rule to {first}: {} from {first} itself",
                if groups.len() == 1 { "" } else { "s" },
                groups.join(", "),
                if groups.len() == 1 { "does" } else { "do" },
                missing
                    .iter()
                    .map(|p| format!("{} ({})", tcp(p), p.what))
                    .collect::<Vec<_>>()
                    .join(", "),
                missing
                    .iter()
                    .map(|p| tcp(p))
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
        })
    }

    /// The vCPUs the test's instance takes of [`STANDARD_QUOTA`]: none for spot (a quota of its
    /// own; a fall back to on-demand after a reclaim is not counted) or another family.
    ///
    /// [`STANDARD_QUOTA`]: quota::STANDARD_QUOTA
    fn standard_vcpus(&self, s: &AwsSettings) -> u64 {
        match (&s.market, is_standard(&s.instance_type)) {
            (Market::OnDemand, true) => self
                .types
                .get(&*s.instance_type)
                .and_then(|t| t.vcpus)
                .unwrap_or(0),
            _ => 0,
        }
    }

    /// The launches a test may make: one per subnet it may launch in (those whose zone offers
    /// its instance type), as acquiring makes them but without user data or ClientToken.
    fn launches(&self, region: &str, s: &AwsSettings) -> Vec<LaunchRequest> {
        let offered = |subnet: &Option<&str>| match subnet {
            None => true,
            Some(id) => self.subnets.get(*id).is_some_and(|(zone, _)| {
                self.offered
                    .contains(&(s.instance_type.to_string(), zone.to_owned()))
            }),
        };
        let mut tags: BTreeMap<String, String> = s
            .tags
            .iter()
            .map(|(k, v)| (k.to_owned(), v.to_string()))
            .collect();
        for key in [
            TAG_WORKSPACE,
            TAG_LINEAGE,
            TAG_TEST,
            TAG_RUN,
            TAG_ATTEMPT,
            "Name",
        ] {
            tags.insert(key.to_owned(), "rallyctl-dry-run".to_owned());
        }
        s.subnets
            .candidates()
            .into_iter()
            .filter(offered)
            .map(|subnet| LaunchRequest {
                region: region.to_owned(),
                ami: s.named_ami().to_owned(),
                instance_type: s.instance_type.to_string(),
                subnets: vec![subnet.map(str::to_owned)],
                security_group_ids: s.security_group_ids.iter().map(|g| g.to_string()).collect(),
                user_data: String::new(),
                // The group is made with the first launch: a dry run into it would find none.
                placement_group: None,
                tags: tags.clone(),
                spot: match &s.market {
                    Market::Spot(o) => Some(o.max_price.as_ref().map(|p| p.to_string())),
                    Market::OnDemand => None,
                },
                on_demand_after_spot: false,
                client_token: String::new(),
            })
            .collect()
    }
}

const SUBNET_KEYS: &[&str] = &["subnet_id", "subnet_ids"];

/// Instance types per DescribeInstanceTypes call that EC2 accepts.
const TYPES_PER_CALL: usize = 100;

/// What EC2 says of an instance type.
struct TypeInfo {
    /// The architectures it runs: `x86_64`, `arm64`, ...
    archs: Vec<String>,
    vcpus: Option<u64>,
}

/// DescribeInstanceTypes of `names`, which must all be types EC2 knows (it fails the whole
/// call otherwise).
async fn instance_types(
    ec2: &aws_sdk_ec2::Client,
    region: &str,
    names: &[String],
) -> Result<HashMap<String, TypeInfo>, ProviderError> {
    let mut found = HashMap::new();
    for chunk in names.chunks(TYPES_PER_CALL) {
        let mut pages = ec2
            .describe_instance_types()
            .set_instance_types(Some(
                chunk.iter().map(|t| InstanceType::from(&**t)).collect(),
            ))
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            for t in page
                .map_err(|e| err("DescribeInstanceTypes", region, e))?
                .instance_types()
            {
                let Some(name) = t.instance_type() else {
                    continue;
                };
                let archs = t
                    .processor_info()
                    .map(|p| p.supported_architectures())
                    .unwrap_or_default()
                    .iter()
                    .map(|a| a.as_str().to_owned())
                    .collect();
                let vcpus = t
                    .v_cpu_info()
                    .and_then(|v| v.default_v_cpus())
                    .and_then(|n| u64::try_from(n).ok());
                found.insert(name.as_str().to_owned(), TypeInfo { archs, vcpus });
            }
        }
    }
    Ok(found)
}
