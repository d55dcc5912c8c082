-- The sample shop of cadre's examples: customers, products, orders and their items (2023-2024).
-- Money is in euros with two decimals; order totals are the sums of their items.
-- Only orders with status 'completed' count as revenue.

CREATE TABLE customers (
    id         INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    email      TEXT NOT NULL UNIQUE,
    country    TEXT NOT NULL,       -- ISO 3166 alpha-2
    joined_on  TEXT NOT NULL        -- YYYY-MM-DD
);

CREATE TABLE products (
    id        INTEGER PRIMARY KEY,
    name      TEXT NOT NULL,
    category  TEXT NOT NULL,
    price     REAL NOT NULL         -- current list price, EUR
);

CREATE TABLE orders (
    id           INTEGER PRIMARY KEY,
    customer_id  INTEGER NOT NULL REFERENCES customers(id),
    ordered_on   TEXT NOT NULL,     -- YYYY-MM-DD
    status       TEXT NOT NULL CHECK (status IN ('completed', 'cancelled', 'refunded')),
    total        REAL NOT NULL      -- EUR, the sum of the order's items
);

CREATE TABLE order_items (
    order_id    INTEGER NOT NULL REFERENCES orders(id),
    product_id  INTEGER NOT NULL REFERENCES products(id),
    quantity    INTEGER NOT NULL CHECK (quantity > 0),
    unit_price  REAL NOT NULL,      -- EUR, the price when ordered
    PRIMARY KEY (order_id, product_id)
);

CREATE INDEX orders_by_customer ON orders(customer_id);
CREATE INDEX orders_by_date ON orders(ordered_on);

INSERT INTO customers (id, name, email, country, joined_on) VALUES
    (1, 'Ada Lovelace', 'ada@example.com', 'GB', '2022-11-03'),
    (2, 'Grace Hopper', 'grace@example.com', 'US', '2022-12-14'),
    (3, 'Alan Turing', 'alan@example.com', 'GB', '2023-01-09'),
    (4, 'Margaret Hamilton', 'margaret@example.com', 'US', '2023-02-21'),
    (5, 'Edsger Dijkstra', 'edsger@example.com', 'NL', '2023-03-30'),
    (6, 'Barbara Liskov', 'barbara@example.com', 'US', '2023-05-17'),
    (7, 'Donald Knuth', 'don@example.com', 'US', '2023-06-02'),
    (8, 'Frances Allen', 'fran@example.com', 'US', '2023-08-11'),
    (9, 'Niklaus Wirth', 'niklaus@example.com', 'CH', '2023-10-25'),
    (10, 'Radia Perlman', 'radia@example.com', 'US', '2024-01-15');

INSERT INTO products (id, name, category, price) VALUES
    (1, 'Espresso Beans 1 kg', 'coffee', 24.90),
    (2, 'Filter Coffee 500 g', 'coffee', 12.50),
    (3, 'Decaf Beans 500 g', 'coffee', 13.90),
    (4, 'Green Tea 100 g', 'tea', 8.90),
    (5, 'Earl Grey 250 g', 'tea', 11.40),
    (6, 'Ceramic Mug', 'kitchen', 14.00),
    (7, 'French Press', 'kitchen', 39.00),
    (8, 'Burr Grinder', 'kitchen', 129.00),
    (9, 'Milk Frother', 'kitchen', 59.00),
    (10, 'Gift Card 50', 'gift', 50.00),
    (11, 'Dark Chocolate Bar', 'snacks', 3.50),
    (12, 'Almond Biscotti', 'snacks', 6.20);

INSERT INTO orders (id, customer_id, ordered_on, status, total) VALUES
    (1, 2, '2023-01-03', 'completed', 57.00),
    (2, 2, '2023-02-18', 'completed', 101.00),
    (3, 3, '2023-02-26', 'completed', 6.20),
    (4, 2, '2023-03-27', 'completed', 63.90),
    (5, 4, '2023-03-28', 'completed', 8.90),
    (6, 3, '2023-04-05', 'completed', 26.30),
    (7, 1, '2023-04-07', 'completed', 19.40),
    (8, 1, '2023-05-01', 'completed', 161.90),
    (9, 3, '2023-05-24', 'completed', 56.20),
    (10, 2, '2023-06-10', 'completed', 72.00),
    (11, 4, '2023-06-26', 'completed', 129.00),
    (12, 5, '2023-07-01', 'completed', 61.60),
    (13, 2, '2023-07-28', 'completed', 160.10),
    (14, 1, '2023-08-14', 'refunded', 69.70),
    (15, 4, '2023-09-05', 'completed', 12.40),
    (16, 3, '2023-10-03', 'completed', 6.20),
    (17, 7, '2023-10-27', 'completed', 22.80),
    (18, 3, '2023-11-22', 'completed', 50.00),
    (19, 2, '2023-11-26', 'completed', 63.90),
    (20, 4, '2023-12-09', 'completed', 24.90),
    (21, 1, '2023-12-20', 'refunded', 146.80),
    (22, 4, '2024-01-22', 'completed', 34.20),
    (23, 1, '2024-02-05', 'completed', 12.50),
    (24, 2, '2024-02-12', 'completed', 89.00),
    (25, 4, '2024-03-14', 'completed', 28.00),
    (26, 9, '2024-03-18', 'completed', 66.90),
    (27, 10, '2024-04-15', 'completed', 14.00),
    (28, 6, '2024-04-21', 'completed', 24.90),
    (29, 10, '2024-05-09', 'cancelled', 25.00),
    (30, 1, '2024-05-11', 'completed', 33.80),
    (31, 10, '2024-06-21', 'completed', 196.80),
    (32, 9, '2024-07-04', 'completed', 37.50),
    (33, 6, '2024-07-15', 'completed', 98.00),
    (34, 10, '2024-08-12', 'cancelled', 23.90),
    (35, 2, '2024-08-23', 'completed', 37.50),
    (36, 9, '2024-09-24', 'completed', 42.50),
    (37, 9, '2024-09-27', 'completed', 37.40),
    (38, 10, '2024-10-20', 'completed', 50.40),
    (39, 5, '2024-11-22', 'completed', 59.00),
    (40, 3, '2024-11-26', 'completed', 21.30),
    (41, 9, '2024-12-20', 'completed', 50.40),
    (42, 10, '2024-12-21', 'completed', 185.80);

INSERT INTO order_items (order_id, product_id, quantity, unit_price) VALUES
    (1, 3, 1, 13.90),
    (1, 5, 3, 11.40),
    (1, 4, 1, 8.90),
    (2, 5, 3, 11.40),
    (2, 7, 1, 39.00),
    (2, 3, 2, 13.90),
    (3, 12, 1, 6.20),
    (4, 7, 1, 39.00),
    (4, 1, 1, 24.90),
    (5, 4, 1, 8.90),
    (6, 11, 1, 3.50),
    (6, 5, 2, 11.40),
    (7, 4, 1, 8.90),
    (7, 11, 3, 3.50),
    (8, 4, 3, 8.90),
    (8, 8, 1, 129.00),
    (8, 12, 1, 6.20),
    (9, 10, 1, 50.00),
    (9, 12, 1, 6.20),
    (10, 2, 1, 12.50),
    (10, 4, 2, 8.90),
    (10, 3, 3, 13.90),
    (11, 8, 1, 129.00),
    (12, 1, 1, 24.90),
    (12, 3, 1, 13.90),
    (12, 5, 2, 11.40),
    (13, 12, 3, 6.20),
    (13, 2, 1, 12.50),
    (13, 8, 1, 129.00),
    (14, 6, 2, 14.00),
    (14, 3, 3, 13.90),
    (15, 4, 1, 8.90),
    (15, 11, 1, 3.50),
    (16, 12, 1, 6.20),
    (17, 5, 2, 11.40),
    (18, 10, 1, 50.00),
    (19, 7, 1, 39.00),
    (19, 1, 1, 24.90),
    (20, 1, 1, 24.90),
    (21, 4, 2, 8.90),
    (21, 8, 1, 129.00),
    (22, 5, 3, 11.40),
    (23, 2, 1, 12.50),
    (24, 10, 1, 50.00),
    (24, 7, 1, 39.00),
    (25, 6, 2, 14.00),
    (26, 1, 1, 24.90),
    (26, 6, 3, 14.00),
    (27, 6, 1, 14.00),
    (28, 1, 1, 24.90),
    (29, 2, 2, 12.50),
    (30, 4, 1, 8.90),
    (30, 1, 1, 24.90),
    (31, 8, 1, 129.00),
    (31, 4, 2, 8.90),
    (31, 10, 1, 50.00),
    (32, 2, 3, 12.50),
    (33, 9, 1, 59.00),
    (33, 7, 1, 39.00),
    (34, 5, 1, 11.40),
    (34, 2, 1, 12.50),
    (35, 2, 3, 12.50),
    (36, 11, 1, 3.50),
    (36, 7, 1, 39.00),
    (37, 1, 1, 24.90),
    (37, 2, 1, 12.50),
    (38, 7, 1, 39.00),
    (38, 5, 1, 11.40),
    (39, 9, 1, 59.00),
    (40, 4, 1, 8.90),
    (40, 12, 2, 6.20),
    (41, 7, 1, 39.00),
    (41, 5, 1, 11.40),
    (42, 8, 1, 129.00),
    (42, 4, 2, 8.90),
    (42, 7, 1, 39.00);
