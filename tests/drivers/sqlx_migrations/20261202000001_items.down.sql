DROP TABLE drv_sqlx_items;
