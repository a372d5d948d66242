//! SQLSTATE codes pgsplit itself sends, as named constants.

/// F0000: the configuration file is invalid (a refused reload).
pub const CONFIG_FILE_ERROR: &str = "F0000";
/// 55000: the operation cannot be done in the current state (a reload that cannot be applied).
pub const OBJECT_NOT_IN_PREREQUISITE_STATE: &str = "55000";
/// 08P01: the peer broke the wire protocol.
pub const PROTOCOL_VIOLATION: &str = "08P01";
/// 08006: a server connection failed.
pub const CONNECTION_FAILURE: &str = "08006";
/// 08001: pgsplit could not establish a server connection.
pub const SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION: &str = "08001";
/// 0A000: a feature pgsplit does not support.
pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
/// 28000: the authorization specification is invalid (unknown user, bad method).
pub const INVALID_AUTHORIZATION_SPECIFICATION: &str = "28000";
/// 28P01: wrong password.
pub const INVALID_PASSWORD: &str = "28P01";
/// 3D000: unknown database.
pub const INVALID_CATALOG_NAME: &str = "3D000";
/// 53300: too many client connections.
pub const TOO_MANY_CONNECTIONS: &str = "53300";
/// 57P01: pgsplit is shutting down.
pub const ADMIN_SHUTDOWN: &str = "57P01";
/// 57P03: no server can take the statement right now.
pub const CANNOT_CONNECT_NOW: &str = "57P03";
/// 57014: a statement or wait was cancelled by a timeout.
pub const QUERY_CANCELED: &str = "57014";
/// 25006: a write reached a read-only transaction (Postgres sends it; tests look for it).
pub const READ_ONLY_SQL_TRANSACTION: &str = "25006";
/// 25P02: a statement inside a transaction that already failed.
pub const IN_FAILED_SQL_TRANSACTION: &str = "25P02";
/// 53400: a configured pgsplit limit was reached (`[limits]`).
pub const CONFIGURATION_LIMIT_EXCEEDED: &str = "53400";
/// 42939: a name reserved for pgsplit (prepared statements named `pgsplit_…`).
pub const RESERVED_NAME: &str = "42939";
/// 26000: no such prepared statement.
pub const INVALID_SQL_STATEMENT_NAME: &str = "26000";
/// 42P05: a prepared statement of that name exists already.
pub const DUPLICATE_PREPARED_STATEMENT: &str = "42P05";
/// 42601: a syntax error (an admin console command pgsplit does not know).
pub const SYNTAX_ERROR: &str = "42601";
/// XX000: an internal error (what an ErrorResponse without a SQLSTATE is counted as).
pub const INTERNAL_ERROR: &str = "XX000";
