//! The plan compiled into a DAG: each suite is a set of parallel test nodes closed by a barrier
//! node, and the next suite's tests hang off that barrier, so no test of a later suite can start
//! before every test of the earlier one has finished.

use std::collections::{HashMap, HashSet};

use petgraph::Direction;
use petgraph::dot::{Config, Dot};
use petgraph::graph::{DiGraph, NodeIndex};

use crate::FastHash;
use crate::address::Address;
use crate::plan::Plan;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Test(Address),
    /// The variants of one plan test: they race interleaved on one machine, so they are
    /// scheduled as one.
    Variants(Vec<Address>),
    /// Every test of the named suite has finished.
    Barrier(String),
}

#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error("test {0} appears twice in the plan")]
    Duplicate(Address),
    #[error("the plan's graph has a cycle through {0:?}")]
    Cycle(Node),
}

#[derive(Debug)]
pub struct Graph {
    dag: DiGraph<Node, ()>,
    /// Per test node, its suite's parallelism bound, if the suite sets one.
    suite_of: HashMap<NodeIndex, usize, FastHash>,
}

impl Graph {
    pub fn compile(plan: &Plan) -> Result<Graph, GraphError> {
        let tests = plan.tests().count();
        let mut dag = DiGraph::with_capacity(tests + plan.suites.len(), 2 * tests);
        let mut suite_of = HashMap::with_capacity_and_hasher(tests, FastHash::default());
        let mut seen = HashSet::with_capacity_and_hasher(tests, FastHash::default());
        let mut previous_barrier = None;
        for (suite_index, suite) in plan.suites.iter().enumerate() {
            let barrier = dag.add_node(Node::Barrier(suite.name.clone()));
            for group in suite.tests.chunk_by(|a, b| {
                a.variant.is_some()
                    && a.variant.as_ref().map(|v| &v.test) == b.variant.as_ref().map(|v| &v.test)
            }) {
                for test in group {
                    if !seen.insert(&test.address) {
                        return Err(GraphError::Duplicate(test.address.clone()));
                    }
                }
                let node = dag.add_node(match group {
                    [test] if test.variant.is_none() => Node::Test(test.address.clone()),
                    _ => Node::Variants(group.iter().map(|t| t.address.clone()).collect()),
                });
                suite_of.insert(node, suite_index);
                if let Some(before) = previous_barrier {
                    dag.add_edge(before, node, ());
                }
                dag.add_edge(node, barrier, ());
            }
            if let Some(before) = previous_barrier {
                // Keeps the barriers chained even through a suite whose tests were all filtered out.
                dag.add_edge(before, barrier, ());
            }
            previous_barrier = Some(barrier);
        }
        petgraph::algo::toposort(&dag, None)
            .map_err(|c| GraphError::Cycle(dag[c.node_id()].clone()))?;
        Ok(Graph { dag, suite_of })
    }

    /// The index of the suite a test node belongs to.
    pub fn suite_index(&self, node: NodeIndex) -> Option<usize> {
        self.suite_of.get(&node).copied()
    }

    pub fn node(&self, index: NodeIndex) -> &Node {
        &self.dag[index]
    }

    /// Starts a walk: nodes become ready once all their predecessors are done.
    pub fn walk(&self) -> Walk<'_> {
        let waiting = self
            .dag
            .node_indices()
            .map(|n| {
                (
                    n,
                    self.dag.neighbors_directed(n, Direction::Incoming).count(),
                )
            })
            .collect();
        Walk {
            graph: self,
            waiting,
        }
    }

    /// Graphviz DOT: one box per test (a 3D box for the variants of one), one diamond per suite
    /// barrier.
    pub fn to_dot(&self) -> String {
        let dot = Dot::with_attr_getters(
            &self.dag,
            &[Config::EdgeNoLabel, Config::NodeNoLabel],
            &|_, _| String::new(),
            &|_, (_, node)| match node {
                Node::Test(address) => {
                    format!("label = {} shape = box", quote(&address.to_string()))
                }
                Node::Variants(addresses) => {
                    let names: Vec<String> = addresses.iter().map(ToString::to_string).collect();
                    format!(
                        "label = {} shape = box3d",
                        quote(&format!("{} (one machine)", names.join(" | ")))
                    )
                }
                Node::Barrier(suite) => format!(
                    "label = {} shape = diamond",
                    quote(&format!("suite {suite} done"))
                ),
            },
        );
        format!("{dot:?}")
    }
}

fn quote(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialize")
}

/// Progress through the graph; the executor reports completions and receives what became ready.
pub struct Walk<'g> {
    graph: &'g Graph,
    waiting: HashMap<NodeIndex, usize>,
}

impl Walk<'_> {
    /// Nodes with nothing left to wait for (taken: each is returned once).
    pub fn take_ready(&mut self) -> Vec<NodeIndex> {
        let mut ready: Vec<_> = self
            .waiting
            .iter()
            .filter(|(_, n)| **n == 0)
            .map(|(node, _)| *node)
            .collect();
        ready.sort();
        for node in &ready {
            self.waiting.remove(node);
        }
        ready
    }

    pub fn complete(&mut self, node: NodeIndex) {
        for next in self.graph.dag.neighbors_directed(node, Direction::Outgoing) {
            if let Some(n) = self.waiting.get_mut(&next) {
                *n -= 1;
            }
        }
    }

    pub fn is_done(&self) -> bool {
        self.waiting.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Plan;

    fn plan(text: &str) -> Plan {
        Plan::parse(std::path::Path::new("t.toml"), text).unwrap()
    }

    const PLAN: &str = r#"
version = 1
name = "g"
[defaults]
region = "us-east-1"
ami = "ami-0a"
instance_type = "t"
track = "geonames"
rally_config = "Cargo.toml"
[[suite]]
name = "one"
[[suite.test]]
name = "a"
[[suite.test]]
name = "b"
[[suite]]
name = "two"
[[suite.test]]
name = "c"
[[suite]]
name = "three"
[[suite.test]]
name = "d"
[[suite.test]]
name = "e"
"#;

    /// Drives a walk where everything ready completes at once, recording the waves.
    fn waves(graph: &Graph) -> Vec<Vec<String>> {
        let mut walk = graph.walk();
        let mut waves = Vec::new();
        while !walk.is_done() {
            let ready = walk.take_ready();
            assert!(!ready.is_empty(), "walk stalled");
            waves.push(
                ready
                    .iter()
                    .map(|n| match graph.node(*n) {
                        Node::Test(address) => address.to_string(),
                        Node::Variants(addresses) => addresses
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join("+"),
                        Node::Barrier(suite) => format!("|{suite}"),
                    })
                    .collect(),
            );
            for n in ready {
                walk.complete(n);
            }
        }
        waves
    }

    /// The variants of a test share a machine, so they are one node, beside the suite's other
    /// tests.
    #[test]
    fn the_variants_of_a_test_are_scheduled_as_one() {
        let text = PLAN.replace(
            "[[suite.test]]\nname = \"b\"\n",
            "[[suite.test]]\nname = \"b\"\n[[suite.test.variant]]\nname = \"x\"\ncar = \"4gheap\"\n\
             [[suite.test.variant]]\nname = \"y\"\ncar = \"8gheap\"\n",
        );
        let graph = Graph::compile(&plan(&text)).unwrap();
        assert_eq!(waves(&graph)[0], ["one.a", "one.b-x+one.b-y"]);
    }

    #[test]
    fn later_suites_wait_for_every_test_of_earlier_ones() {
        let graph = Graph::compile(&plan(PLAN)).unwrap();
        assert_eq!(
            waves(&graph),
            [
                vec!["one.a", "one.b"],
                vec!["|one"],
                vec!["two.c"],
                vec!["|two"],
                vec!["three.d", "three.e"],
                vec!["|three"],
            ]
        );
    }

    #[test]
    fn a_test_of_suite_two_is_not_ready_while_one_test_of_suite_one_runs() {
        let graph = Graph::compile(&plan(PLAN)).unwrap();
        let mut walk = graph.walk();
        let first = walk.take_ready();
        assert_eq!(first.len(), 2);
        walk.complete(first[0]);
        assert!(
            walk.take_ready().is_empty(),
            "suite two started before one.b finished"
        );
        walk.complete(first[1]);
        assert_eq!(walk.take_ready().len(), 1, "barrier of suite one");
    }

    #[test]
    fn dot_export() {
        let graph = Graph::compile(&plan(PLAN)).unwrap();
        insta::assert_snapshot!(graph.to_dot());
    }
}
