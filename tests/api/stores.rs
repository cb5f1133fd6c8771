//! One suite for both stores: a test written once with [`both_stores!`] runs twice, against this
//! process's own store and against a real `redis-server` of its own (REDIS_URL), with the same
//! body. The harness reads which store the running test is on from [`on_store`] and, on Redis,
//! starts the server, points the instance at it and waits until the instance reads its limits
//! there.

use crate::redis::harness::RedisServer;

/// Which store a test's instances use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    InProcess,
    Redis,
}

tokio::task_local! {
    static STORE: Store;
}

/// Runs `test` with its instances on `store`.
pub async fn on_store(store: Store, test: impl Future<Output = ()>) {
    STORE.scope(store, test).await;
}

/// The store the running test is on (this process's own outside [`on_store`]).
pub fn current() -> Store {
    STORE.try_with(|store| *store).unwrap_or(Store::InProcess)
}

/// A Redis for an instance of a test on [`Store::Redis`] that configured none, with its URL.
pub async fn redis_for_test() -> Option<RedisServer> {
    match current() {
        Store::InProcess => None,
        Store::Redis => Some(RedisServer::start().await),
    }
}

/// Writes each test once and runs it on both stores: `<module>::in_process::<test>` and
/// `<module>::on_redis::<test>`.
#[macro_export]
macro_rules! both_stores {
    ($( $(#[doc = $doc:literal])* async fn $name:ident() $body:block )*) => {
        $( $(#[doc = $doc])* async fn $name() $body )*

        mod in_process {
            $(
                #[tokio::test]
                async fn $name() {
                    $crate::stores::on_store($crate::stores::Store::InProcess, super::$name()).await;
                }
            )*
        }

        mod on_redis {
            $(
                #[tokio::test]
                async fn $name() {
                    $crate::stores::on_store($crate::stores::Store::Redis, super::$name()).await;
                }
            )*
        }
    };
}
