/*
 * The local side of the "Inventory back-end → Postgres" example: your own
 * tables (schema `inventory` of Syncline's database), filled from four
 * tables of an Airtable base. In a real project these come from your
 * migrations; Syncline never creates or alters them.
 *
 * Keys are Airtable's record ids ("rec…"): they never change when a row is
 * renamed, and linked-record cells hold them, so the foreign keys below are
 * the links of the base. The types are the first line of validation: a
 * cell its column's type rejects is quarantined with the reason.
 *
 * Safe to run again and again: only `if not exists`, never a drop.
 */

create schema if not exists inventory;
comment on schema inventory is 'Suppliers, locations, products and stock levels, kept in step with the inventory Airtable base by Syncline.';

create table if not exists inventory.suppliers (
  id text primary key check (id ~ '^rec[A-Za-z0-9]{14}$'),
  name text not null,
  email text,
  phone text,
  country text check (country ~ '^[A-Z]{2}$'),
  created_time timestamptz
);
comment on table inventory.suppliers is 'Suppliers (table "Suppliers" of the base; mirror: a record deleted there goes once no product links to it).';
comment on column inventory.suppliers.id is 'Airtable record id (rec…), the key.';
comment on column inventory.suppliers.name is 'Field "Name".';
comment on column inventory.suppliers.email is 'Field "Email"; null when the cell is empty.';
comment on column inventory.suppliers.phone is 'Field "Phone".';
comment on column inventory.suppliers.country is 'Field "Country", ISO 3166-1 alpha-2.';
comment on column inventory.suppliers.created_time is 'When the record was created in Airtable (createdTime).';

create table if not exists inventory.locations (
  id text primary key check (id ~ '^rec[A-Za-z0-9]{14}$'),
  name text not null,
  code text
);
comment on table inventory.locations is 'Warehouses and stores (table "Locations" of the base).';
comment on column inventory.locations.id is 'Airtable record id (rec…), the key.';
comment on column inventory.locations.name is 'Field "Name".';
comment on column inventory.locations.code is 'Field "Code", a short code such as BER.';

create table if not exists inventory.products (
  id text primary key check (id ~ '^rec[A-Za-z0-9]{14}$'),
  sku text not null unique,
  name text not null,
  unit_price numeric(10, 2) check (unit_price >= 0),
  supplier_id text references inventory.suppliers (id),
  active boolean,
  created_time timestamptz
);
comment on table inventory.products is 'Products (table "Products" of the base).';
comment on column inventory.products.id is 'Airtable record id (rec…), the key.';
comment on column inventory.products.sku is 'Field "SKU", unique.';
comment on column inventory.products.name is 'Field "Name".';
comment on column inventory.products.unit_price is 'Field "Unit Price" (a currency field: a plain number in the API).';
comment on column inventory.products.supplier_id is 'The first record of the linked-record field "Supplier".';
comment on column inventory.products.active is 'Checkbox "Active": true when ticked, null when not (Airtable leaves unticked boxes out).';
comment on column inventory.products.created_time is 'When the record was created in Airtable (createdTime).';
create index if not exists products_supplier_idx on inventory.products (supplier_id);
comment on index inventory.products_supplier_idx is 'Lets the suppliers merge check cheaply whether a supplier is still referenced before deleting it.';

create table if not exists inventory.stock_levels (
  id text primary key check (id ~ '^rec[A-Za-z0-9]{14}$'),
  product_id text not null references inventory.products (id),
  location_id text not null references inventory.locations (id),
  quantity integer not null check (quantity >= 0),
  reorder_level integer,
  last_counted timestamptz
);
comment on table inventory.stock_levels is 'Stock of a product at a location (table "Stock Levels" of the base).';
comment on column inventory.stock_levels.id is 'Airtable record id (rec…), the key.';
comment on column inventory.stock_levels.product_id is 'The linked-record field "Product".';
comment on column inventory.stock_levels.location_id is 'The linked-record field "Location".';
comment on column inventory.stock_levels.quantity is 'Field "Quantity", units on hand.';
comment on column inventory.stock_levels.reorder_level is 'Field "Reorder Level"; null when not set.';
comment on column inventory.stock_levels.last_counted is 'Field "Last Counted" (a date-time field: ISO 8601 in UTC in the API).';
create index if not exists stock_levels_product_idx on inventory.stock_levels (product_id);
comment on index inventory.stock_levels_product_idx is 'Lets the products merge check cheaply whether a product is still referenced before deleting it.';
create index if not exists stock_levels_location_idx on inventory.stock_levels (location_id);
comment on index inventory.stock_levels_location_idx is 'Lets the locations merge check cheaply whether a location is still referenced before deleting it.';
