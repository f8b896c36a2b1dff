//! `filesystem.Filesystem`: Stat, ListDir, MakeDir, Move, Remove, WatchDir
//! and the polled watcher trio. Paths are relative to the user's home.

use std::time::Duration;

use http::Response;
use hyper::body::Incoming;

use super::{Ctx, blocking, not_implemented, server_stream, unary};
use crate::connect::{Body, Code, RpcError, StreamSender};
use crate::proto::filesystem::*;
use crate::{fs, paths, watch};

pub async fn route(ctx: Ctx, method: &str, body: Incoming) -> Response<Body> {
    match method {
        "Stat" => unary(ctx, body, stat).await,
        "ListDir" => unary(ctx, body, list_dir).await,
        "MakeDir" => unary(ctx, body, make_dir).await,
        "Move" => unary(ctx, body, move_entry).await,
        "Remove" => unary(ctx, body, remove).await,
        "WatchDir" => server_stream(ctx, body, watch_dir).await,
        "CreateWatcher" => unary(ctx, body, create_watcher).await,
        "GetWatcherEvents" => unary(ctx, body, get_watcher_events).await,
        "RemoveWatcher" => unary(ctx, body, remove_watcher).await,
        _ => not_implemented(&format!("/filesystem.Filesystem/{method}")),
    }
}

async fn stat(ctx: Ctx, req: StatRequest) -> Result<StatResponse, RpcError> {
    let user = ctx.user()?;
    let path = paths::resolve(&req.path, &user.home)?;
    let names = ctx.shared.accounts.names();
    let entry = blocking(move || fs::entry_info(&path, &names)).await?;
    Ok(EntryResponse { entry: Some(entry) })
}

async fn list_dir(ctx: Ctx, req: ListDirRequest) -> Result<ListDirResponse, RpcError> {
    let user = ctx.user()?;
    let path = paths::resolve(&req.path, &user.home)?;
    let names = ctx.shared.accounts.names();
    let entries = blocking(move || fs::list_dir(&path, req.depth, &names)).await?;
    Ok(ListDirResponse { entries })
}

async fn make_dir(ctx: Ctx, req: MakeDirRequest) -> Result<MakeDirResponse, RpcError> {
    let user = ctx.user()?;
    let path = paths::resolve(&req.path, &user.home)?;
    let names = ctx.shared.accounts.names();
    let entry = blocking(move || {
        fs::make_dir(&path, &user)?;
        fs::entry_info(&path, &names)
    })
    .await?;
    Ok(EntryResponse { entry: Some(entry) })
}

async fn move_entry(ctx: Ctx, req: MoveRequest) -> Result<MoveResponse, RpcError> {
    let user = ctx.user()?;
    let from = paths::resolve(&req.source, &user.home)?;
    let to = paths::resolve(&req.destination, &user.home)?;
    let names = ctx.shared.accounts.names();
    let entry = blocking(move || {
        fs::rename(&from, &to, &user)?;
        fs::entry_info(&to, &names)
    })
    .await?;
    Ok(EntryResponse { entry: Some(entry) })
}

async fn remove(ctx: Ctx, req: RemoveRequest) -> Result<Empty, RpcError> {
    let user = ctx.user()?;
    let path = paths::resolve(&req.path, &user.home)?;
    if path == std::path::Path::new("/") {
        return Err(RpcError::invalid_argument("refusing to remove /"));
    }
    blocking(move || fs::remove(&path)).await?;
    Ok(Empty {})
}

fn start_watch(ctx: &Ctx, req: &WatchDirRequest) -> Result<watch::DirWatch, RpcError> {
    let user = ctx.user()?;
    let path = paths::resolve(&req.path, &user.home)?;
    watch::watch(
        &path,
        req.recursive,
        req.include_entry,
        ctx.shared.accounts.names(),
    )
}

async fn watch_dir(ctx: Ctx, req: WatchDirRequest, sender: StreamSender) {
    let mut w = match start_watch(&ctx, &req) {
        Ok(w) => w,
        Err(e) => return sender.finish(Some(e)).await,
    };
    let start = WatchDirResponse {
        event: Some(watch_dir_response::Event::Start(Empty {})),
    };
    if sender.send(&start).await.is_err() {
        return;
    }
    let keepalive = ctx.keepalive();
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + keepalive, keepalive);
    let deadline = tokio::time::sleep(ctx.call.timeout.unwrap_or(Duration::MAX / 4));
    tokio::pin!(deadline);
    loop {
        let msg = tokio::select! {
            ev = w.events.recv() => match ev {
                Some(ev) => watch_dir_response::Event::Filesystem(ev),
                None => {
                    return sender
                        .finish(Some(RpcError::internal(format!("the watch on {:?} stopped", req.path))))
                        .await;
                }
            },
            _ = ticks.tick() => watch_dir_response::Event::Keepalive(Empty {}),
            _ = &mut deadline, if ctx.call.timeout.is_some() => {
                return sender
                    .finish(Some(RpcError::new(
                        Code::DeadlineExceeded,
                        format!("watch on {:?} reached its Connect-Timeout-Ms", req.path),
                    )))
                    .await;
            }
            _ = sender.closed() => return,
        };
        let msg = WatchDirResponse { event: Some(msg) };
        if sender.send(&msg).await.is_err() {
            return;
        }
    }
}

async fn create_watcher(
    ctx: Ctx,
    req: CreateWatcherRequest,
) -> Result<CreateWatcherResponse, RpcError> {
    let w = start_watch(&ctx, &req)?;
    Ok(CreateWatcherResponse {
        watcher_id: ctx.shared.watchers.add(w),
    })
}

async fn get_watcher_events(
    ctx: Ctx,
    req: GetWatcherEventsRequest,
) -> Result<GetWatcherEventsResponse, RpcError> {
    Ok(GetWatcherEventsResponse {
        events: ctx.shared.watchers.drain(&req.watcher_id).await?,
    })
}

async fn remove_watcher(ctx: Ctx, req: RemoveWatcherRequest) -> Result<Empty, RpcError> {
    ctx.shared.watchers.remove(&req.watcher_id)?;
    Ok(Empty {})
}
