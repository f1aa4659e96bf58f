//! The region's running On-Demand vCPU quota of the standard families (Service Quotas
//! `L-1216C47A`) and what the account's instances already hold of it, so that `plan` can warn
//! before a run asks EC2 for more vCPUs than it would grant.

use aws_config::{Region, SdkConfig};

use super::{Account, instance_types};
use crate::provider::ProviderError;
use crate::provider::aws::{err, id_filter};

/// Service Quotas' code of EC2's running On-Demand vCPUs of the standard families, named in
/// `VcpuLimitExceeded` errors and in plan's warning.
pub(super) const STANDARD_QUOTA: &str = "L-1216C47A";
pub(in crate::provider::aws) const STANDARD_QUOTA_NAME: &str = "Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances vCPU quota (Service Quotas L-1216C47A)";

/// Whether an instance type counts against [`STANDARD_QUOTA`]: the families A, C, D, H, I, M,
/// R, T and Z (their letters before the generation; `inf`, `dl`, `hpc`, `trn` and `mac` are
/// families of their own with their own quotas, as are F, G, P, VT, X and U).
pub(in crate::provider::aws) fn is_standard(instance_type: &str) -> bool {
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
pub(super) async fn standard_quota(
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
}
