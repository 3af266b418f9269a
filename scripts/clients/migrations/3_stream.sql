-- A stream scoring every reading, and a table the application fills.
CREATE STREAM hot AS SELECT device, temp, ts FROM readings WHERE temp > 30;
CREATE TABLE settings (key text PRIMARY KEY, value text);
