-- A push source, a materialized view over it, and a model.
CREATE SOURCE readings (device int NOT NULL, temp double precision, ts timestamptz,
    WATERMARK FOR ts AS ts - INTERVAL '1 second');
CREATE MATERIALIZED VIEW per_device AS
  SELECT device, count(*) AS n, max(temp) AS max_temp FROM readings GROUP BY device;
CREATE MODEL anomaly FROM '@MODEL@' WITH (features = 'temperature, vibration');
