//! Integration suite of the data plane: real sockets on 127.0.0.1, `serve()` driven through
//! watches the tests hold.

mod common;
mod h1;
mod h2c;
mod hygiene;
mod keepalive;
mod leader;
mod limits;
mod retries;
mod rewrites;
mod routing;
mod websocket;
