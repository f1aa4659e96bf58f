//! Before planning: what the plan's aws tests name, checked against the account, as Terraform
//! refreshes before it plans. Each finding is a [`Problem`] that `plan` places at the plan
//! file's line and column, so nothing is paid for before the plan could launch.

use std::collections::{BTreeMap, HashMap, HashSet};

use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types::{InstanceType, IpPermission, LocationType};

use super::instances::{LaunchRequest, run_request};
use super::{
    FILTER_VALUES, TAG_ATTEMPT, TAG_LINEAGE, TAG_RUN, TAG_TEST, TAG_WORKSPACE, check_credentials,
    err, id_filter,
};
use crate::cost::{DEFAULT_VOLUME_TYPE, RootVolume};
use crate::plan::{AwsSettings, Connect, Market, Ports, Subnets};
use crate::provider::{Limit, Preflight, Problem, ProviderError};

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
/// launch (RunInstances with `DryRun`) says EC2 would take it, permissions included; a
/// cluster's security groups let its machines reach one another on its ports. Lookups
/// are batched per region and by filter, so that one missing id does not hide the others.
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
        for c in tests {
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

/// What the cost estimate asks of EC2 ([`crate::cost::Ec2`]): an image's root volume, an
/// instance type's spot price now.
pub struct CostFacts {
    base: SdkConfig,
}

impl CostFacts {
    /// With the standard chain's credentials, and as few attempts as the preflight's.
    pub async fn from_env() -> CostFacts {
        CostFacts {
            base: aws_config::defaults(BehaviorVersion::latest())
                .retry_config(RetryConfig::standard().with_max_attempts(3))
                .load()
                .await,
        }
    }

    fn ec2(&self, region: &str) -> aws_sdk_ec2::Client {
        aws_sdk_ec2::Client::from_conf(
            aws_sdk_ec2::config::Builder::from(&self.base)
                .region(Region::new(region.to_owned()))
                .build(),
        )
    }
}

impl crate::cost::Ec2 for CostFacts {
    type Error = ProviderError;

    async fn root_volume(
        &self,
        region: &str,
        image: &str,
    ) -> Result<Option<RootVolume>, ProviderError> {
        let out = self
            .ec2(region)
            .describe_images()
            .filters(id_filter("image-id", &[image.to_owned()]))
            .include_deprecated(true)
            .send()
            .await
            .map_err(|e| err("DescribeImages", region, e))?;
        Ok(out.images().first().and_then(root_volume_of))
    }

    async fn spot_price(&self, key: &crate::cost::Key) -> Result<Option<f64>, ProviderError> {
        // From now: EC2 answers with the price in effect now in each zone.
        let mut pages = self
            .ec2(&key.region)
            .describe_spot_price_history()
            .instance_types(InstanceType::from(&*key.instance_type))
            .product_descriptions("Linux/UNIX")
            .start_time(aws_sdk_ec2::primitives::DateTime::from(
                std::time::SystemTime::now(),
            ))
            .into_paginator()
            .send();
        let mut cheapest: Option<f64> = None;
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| err("DescribeSpotPriceHistory", &key.region, e))?;
            for price in page.spot_price_history() {
                if let Some(usd) = price.spot_price().and_then(|p| p.parse::<f64>().ok()) {
                    cheapest = Some(cheapest.map_or(usd, |c| c.min(usd)));
                }
            }
        }
        Ok(cheapest)
    }
}

/// The root device's EBS mapping of `image`: its size and type (gp3 where it names none).
fn root_volume_of(image: &aws_sdk_ec2::types::Image) -> Option<RootVolume> {
    let root = image.root_device_name()?;
    let ebs = (image.block_device_mappings().iter())
        .find(|m| m.device_name() == Some(root))?
        .ebs()?;
    Some(RootVolume {
        gib: u32::try_from(ebs.volume_size()?).ok()?,
        volume_type: ebs
            .volume_type()
            .map_or(DEFAULT_VOLUME_TYPE, |t| t.as_str())
            .to_owned(),
    })
}

/// Service Quotas' code of EC2's running On-Demand vCPUs of the standard families, named in
/// `VcpuLimitExceeded` errors and in plan's warning.
pub(super) const STANDARD_QUOTA: &str = "L-1216C47A";
pub(super) const STANDARD_QUOTA_NAME: &str = "Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances vCPU quota (Service Quotas L-1216C47A)";

/// Whether an instance type counts against [`STANDARD_QUOTA`]: the families A, C, D, H, I, M,
/// R, T and Z (their letters before the generation; `inf`, `dl`, `hpc`, `trn` and `mac` are
/// families of their own with their own quotas, as are F, G, P, VT, X and U).
pub(super) fn is_standard(instance_type: &str) -> bool {
    let family: String = instance_type
        .chars()
        .take_while(|c| c.is_ascii_lowercase())
        .collect();
    matches!(
        &*family,
        "a" | "c" | "d" | "h" | "i" | "im" | "is" | "m" | "r" | "t" | "z"
    )
}

/// The region's [`STANDARD_QUOTA`] and the vCPUs its running and pending On-Demand instances
/// of the standard families hold; `Err` says why the quota could not be read (Service Quotas
/// refused, or does not know it), which leaves the plan unchecked rather than failed.
async fn standard_quota(
    base: &SdkConfig,
    ec2: &aws_sdk_ec2::Client,
    region: &str,
    account: &Account,
) -> Result<Result<(u64, u64), String>, ProviderError> {
    let quotas = aws_sdk_servicequotas::Client::from_conf(
        aws_sdk_servicequotas::config::Builder::from(base)
            .region(Region::new(region.to_owned()))
            .build(),
    );
    let quota = match quotas
        .get_service_quota()
        .service_code("ec2")
        .quota_code(STANDARD_QUOTA)
        .send()
        .await
    {
        Ok(out) => match out.quota().and_then(|q| q.value()) {
            Some(v) => v as u64,
            None => {
                return Ok(Err(format!(
                    "{region}'s {STANDARD_QUOTA_NAME} was not checked: Service Quotas named no value"
                )));
            }
        },
        Err(e) => {
            return Ok(Err(format!(
                "{region}'s {STANDARD_QUOTA_NAME} was not checked: {}",
                err("GetServiceQuota", region, e)
            )));
        }
    };
    let mut running: Vec<String> = Vec::new();
    let mut pages = ec2
        .describe_instances()
        .filters(id_filter(
            "instance-state-name",
            &["pending".to_owned(), "running".to_owned()],
        ))
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| err("DescribeInstances", region, e))?;
        running.extend(
            page.reservations()
                .iter()
                .flat_map(|r| r.instances())
                // Spot and scheduled instances count against quotas of their own.
                .filter(|i| i.instance_lifecycle().is_none())
                .filter_map(|i| i.instance_type())
                .map(|t| t.as_str().to_owned())
                .filter(|t| is_standard(t)),
        );
    }
    let unknown: Vec<String> = {
        let mut u: Vec<String> = running
            .iter()
            .filter(|t| !account.types.contains_key(*t))
            .cloned()
            .collect();
        u.sort();
        u.dedup();
        u
    };
    let more = instance_types(ec2, region, &unknown).await?;
    let vcpus = |t: &String| {
        account
            .types
            .get(t)
            .or_else(|| more.get(t))
            .and_then(|i| i.vcpus)
            .unwrap_or(0)
    };
    Ok(Ok((quota, running.iter().map(vcpus).sum())))
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
                    zones.push(zone.as_str());
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
            _ => zones.is_empty() || zones.iter().any(|z| offered(z)),
        };
        if !type_offered {
            let place = if zones.is_empty() {
                region.to_owned()
            } else {
                zones.join(", ")
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

/// The `ports` that none of `rules` (the inbound rules of a test's security groups) opens to
/// the test's own machines for TCP: a rule counts from one of `groups` (the machines carry
/// them all), from a CIDR block holding every one of `subnets` (the CIDR blocks the machines
/// may launch in; unknown: `None`), or from anywhere; a range counts when rules cover all of it.
fn missing_ports<'p>(
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

impl LaunchRequest {
    /// What makes two launches the same to EC2's checks (permissions, AMI, type, subnet).
    fn key(&self) -> LaunchKey {
        (
            self.ami.clone(),
            self.instance_type.clone(),
            self.subnets.clone(),
            self.security_group_ids.clone(),
            self.spot.clone(),
            self.tags.clone(),
        )
    }
}

type LaunchKey = (
    String,
    String,
    Vec<Option<String>>,
    Vec<String>,
    Option<Option<String>>,
    BTreeMap<String, String>,
);

/// RunInstances of `launch` with `DryRun`: EC2 answers `DryRunOperation` when the launch would
/// be taken, else why not (`UnauthorizedOperation` with an encoded reason, a parameter it
/// refuses), as a problem at the test's AMI.
async fn dry_run(
    base: &SdkConfig,
    ec2: &aws_sdk_ec2::Client,
    launch: &LaunchRequest,
    s: &AwsSettings,
) -> Result<Option<Problem>, ProviderError> {
    let region = &launch.region;
    let subnet = &launch.subnets[0];
    let e = match run_request(ec2, launch, subnet, launch.spot.as_ref())
        .dry_run(true)
        .send()
        .await
    {
        Ok(_) => return Ok(None),
        Err(e) => e,
    };
    let what = format!(
        "launch {} as {} {}",
        launch.ami,
        launch.instance_type,
        match subnet {
            Some(id) => format!("in {id}"),
            None => format!("in {region}'s default VPC"),
        }
    );
    let message = match (e.code(), e.message()) {
        (Some("DryRunOperation"), _) => return Ok(None),
        (Some("UnauthorizedOperation"), message) => format!(
            "this identity may not {what} (RunInstances with DryRun: UnauthorizedOperation): {}",
            unauthorized_reason(base, region, message.unwrap_or_default()).await
        ),
        (Some(code), message) => format!(
            "EC2 would refuse to {what} (RunInstances with DryRun): {code}: {}",
            message.unwrap_or("no message")
        ),
        // No answer from EC2 (network, credentials): the check itself failed.
        (None, _) => return Err(err("RunInstances (DryRun)", region, e)),
    };
    Ok(Some(Problem {
        keys: if s.base_ami.is_some() {
            &["base_ami"]
        } else {
            &["ami"]
        },
        value: s.named_ami().to_owned(),
        message,
    }))
}

/// EC2 ends an `UnauthorizedOperation` message with this and the encoded reason.
const ENCODED: &str = "Encoded authorization failure message: ";

/// Why EC2 refused: the encoded reason decoded through STS where this identity may
/// (`sts:DecodeAuthorizationMessage`), else the command that decodes it.
async fn unauthorized_reason(base: &SdkConfig, region: &str, message: &str) -> String {
    let Some((_, encoded)) = message.split_once(ENCODED) else {
        return message.to_owned();
    };
    let sts = aws_sdk_sts::Client::from_conf(
        aws_sdk_sts::config::Builder::from(base)
            .region(Region::new(region.to_owned()))
            .build(),
    );
    let encoded = encoded.trim();
    match sts
        .decode_authorization_message()
        .encoded_message(encoded)
        .send()
        .await
    {
        Ok(out) => {
            let decoded = out.decoded_message().unwrap_or_default();
            decoded_reason(decoded).unwrap_or_else(|| decoded.to_owned())
        }
        Err(e) => format!(
            "EC2's reason is encoded, and this identity may not decode it ({}); an identity with sts:DecodeAuthorizationMessage may: `aws sts decode-authorization-message --encoded-message {encoded} --query DecodedMessage --output text`",
            err("DecodeAuthorizationMessage", region, e).message
        ),
    }
}

/// A decoded authorization message in one line: who may not do what on which resource, and
/// whether a policy denies it or none allows it.
fn decoded_reason(decoded: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(decoded).ok()?;
    let context = &v["context"];
    let action = context["action"].as_str()?;
    let who = context["principal"]["arn"]
        .as_str()
        .unwrap_or("this identity");
    let resource = context["resource"].as_str().unwrap_or("*");
    let why = if v["explicitDeny"].as_bool() == Some(true) {
        "a policy denies it explicitly"
    } else {
        "no policy allows it"
    };
    Some(format!("{who} may not {action} on {resource}: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_standard_families_count_against_the_standard_vcpu_quota() {
        for t in [
            "m5.large",
            "c7gn.xlarge",
            "r7iz.large",
            "t3.micro",
            "i4i.large",
            "im4gn.large",
            "is4gen.large",
            "d3en.xlarge",
            "z1d.large",
            "a1.large",
            "h1.2xlarge",
            "m7i-flex.large",
        ] {
            assert!(is_standard(t), "{t}");
        }
        for t in [
            "g5.xlarge",
            "p4d.24xlarge",
            "inf2.xlarge",
            "dl1.24xlarge",
            "trn1.2xlarge",
            "hpc7g.4xlarge",
            "x2iedn.xlarge",
            "u-6tb1.metal",
            "mac2.metal",
            "f1.2xlarge",
            "vt1.3xlarge",
        ] {
            assert!(!is_standard(t), "{t}");
        }
    }

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

    #[test]
    fn a_decoded_authorization_message_reads_as_who_may_not_do_what_and_why() {
        let decoded = r#"{"allowed":false,"explicitDeny":true,"matchedStatements":{"items":[]},"failures":{"items":[]},"context":{"principal":{"id":"AIDA","arn":"arn:aws:iam::1:user/ci"},"action":"ec2:RunInstances","resource":"arn:aws:ec2:eu-west-1:1:instance/*","conditions":{"items":[]}}}"#;
        assert_eq!(
            decoded_reason(decoded).as_deref(),
            Some(
                "arn:aws:iam::1:user/ci may not ec2:RunInstances on arn:aws:ec2:eu-west-1:1:instance/*: a policy denies it explicitly"
            )
        );
        assert_eq!(decoded_reason("not json"), None);
    }
}
