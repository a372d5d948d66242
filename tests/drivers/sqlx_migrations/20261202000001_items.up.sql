-- The table the sqlx driver test (tests/it/sqlx_driver.rs) writes and reads.
CREATE TABLE drv_sqlx_items (
    id bigserial PRIMARY KEY,
    name text NOT NULL UNIQUE,
    v int4 NOT NULL,
    body text
);
CREATE INDEX drv_sqlx_items_v ON drv_sqlx_items (v);
