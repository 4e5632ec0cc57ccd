//! Integration suite of the data plane: real sockets on 127.0.0.1, `serve()` driven through
//! watches the tests hold.

mod common;
mod leader;
mod routing;
mod websocket;
