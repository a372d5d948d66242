//! Tags of the messages a server sends (the backend side of the protocol). Some bytes mean another message in
//! the other direction (`S` is ParameterStatus here and Sync from a client): compare a server frame's tag only
//! with these.

/// Authentication request (AuthenticationOk, SASL, …).
pub const AUTHENTICATION: u8 = b'R';
/// BackendKeyData.
pub const BACKEND_KEY_DATA: u8 = b'K';
/// ParameterStatus.
pub const PARAMETER_STATUS: u8 = b'S';
/// ReadyForQuery.
pub const READY_FOR_QUERY: u8 = b'Z';
/// ParseComplete.
pub const PARSE_COMPLETE: u8 = b'1';
/// BindComplete.
pub const BIND_COMPLETE: u8 = b'2';
/// CloseComplete.
pub const CLOSE_COMPLETE: u8 = b'3';
/// NoData.
pub const NO_DATA: u8 = b'n';
/// RowDescription.
pub const ROW_DESCRIPTION: u8 = b'T';
/// DataRow.
pub const DATA_ROW: u8 = b'D';
/// CommandComplete.
pub const COMMAND_COMPLETE: u8 = b'C';
/// EmptyQueryResponse.
pub const EMPTY_QUERY_RESPONSE: u8 = b'I';
/// ErrorResponse.
pub const ERROR_RESPONSE: u8 = b'E';
/// NoticeResponse.
pub const NOTICE_RESPONSE: u8 = b'N';
/// CopyData (server to client, COPY TO STDOUT).
pub const COPY_DATA: u8 = b'd';
/// NegotiateProtocolVersion.
pub const NEGOTIATE_PROTOCOL_VERSION: u8 = b'v';

/// ReadyForQuery status: idle, outside a transaction block.
pub const IDLE: u8 = b'I';
/// ReadyForQuery status: in a transaction block.
pub const IN_TRANSACTION: u8 = b'T';
/// ReadyForQuery status: in a failed transaction block.
pub const FAILED_TRANSACTION: u8 = b'E';

/// ErrorResponse/NoticeResponse field: severity (localized).
pub const FIELD_SEVERITY: u8 = b'S';
/// ErrorResponse/NoticeResponse field: severity, never localized.
pub const FIELD_SEVERITY_NONLOCALIZED: u8 = b'V';
/// ErrorResponse/NoticeResponse field: SQLSTATE.
pub const FIELD_CODE: u8 = b'C';
/// ErrorResponse/NoticeResponse field: message.
pub const FIELD_MESSAGE: u8 = b'M';
