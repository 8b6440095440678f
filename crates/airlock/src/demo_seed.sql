-- Seed for `airlock demo`: a small shop whose tables hold PII.
-- __OWNER_PASSWORD__ is replaced by a random password only the gateway knows.
CREATE ROLE shop_owner LOGIN PASSWORD '__OWNER_PASSWORD__';
CREATE DATABASE shop OWNER shop_owner;
\connect shop
SET ROLE shop_owner;

-- Completes a card number prefix with its Luhn check digit.
CREATE FUNCTION pg_temp.luhn(prefix text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
  total int := 0; d int; dbl boolean := true; i int;
BEGIN
  FOR i IN REVERSE length(prefix)..1 LOOP
    d := substr(prefix, i, 1)::int;
    IF dbl THEN d := d * 2; IF d > 9 THEN d := d - 9; END IF; END IF;
    total := total + d; dbl := NOT dbl;
  END LOOP;
  RETURN prefix || ((10 - total % 10) % 10)::text;
END $$;

CREATE TABLE customers (
  id         serial PRIMARY KEY,
  full_name  text NOT NULL,
  email      text NOT NULL UNIQUE,
  phone      text,
  ssn        text,
  created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE payments (
  id          serial PRIMARY KEY,
  customer_id int NOT NULL REFERENCES customers(id),
  card_number text NOT NULL,
  amount      numeric(10,2) NOT NULL,
  paid_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE orders (
  id          serial PRIMARY KEY,
  customer_id int NOT NULL REFERENCES customers(id),
  order_ref   text NOT NULL,
  status      text NOT NULL,
  total       numeric(10,2) NOT NULL
);

INSERT INTO customers (full_name, email, phone, ssn) VALUES
  ('John Doe',      'john.doe@example.com',   '+1 415 555 0100', '123-45-6789'),
  ('Jane Roe',      'jane.roe@example.org',   '+1 212 555 0199', '219-09-9999'),
  ('Ada Lovelace',  'ada@analytical.engine',  '+44 20 7946 0958', NULL);

INSERT INTO customers (full_name, email, phone, ssn)
SELECT 'Customer ' || g,
       'customer' || g || '@example.com',
       '+1 555 01' || lpad((g % 100)::text, 2, '0') || ' ' || lpad((1000 + g)::text, 4, '0'),
       lpad((100 + g % 600)::text, 3, '0') || '-' || lpad((10 + g % 89)::text, 2, '0') || '-' || lpad((1000 + g)::text, 4, '0')
FROM generate_series(4, 200) AS g;

INSERT INTO payments (customer_id, card_number, amount)
SELECT 1 + (g % 200),
       pg_temp.luhn('4' || lpad((g * 7919)::text, 14, '0')),
       round((10 + (g * 37) % 490)::numeric, 2)
FROM generate_series(1, 500) AS g;

INSERT INTO orders (customer_id, order_ref, status, total)
SELECT 1 + (g % 200), 'ORD-' || lpad(g::text, 8, '0'),
       (ARRAY['new', 'paid', 'shipped', 'returned'])[1 + g % 4],
       round((5 + (g * 13) % 300)::numeric, 2)
FROM generate_series(1, 1000) AS g;
