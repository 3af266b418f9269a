-- Plain tables and a view.
CREATE TABLE devices (id int PRIMARY KEY, name text NOT NULL, added timestamptz DEFAULT now());
CREATE VIEW named_devices AS SELECT id, name FROM devices WHERE name <> '';
INSERT INTO devices (id, name) VALUES (1, 'pump'), (2, 'fan');
