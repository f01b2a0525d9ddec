/*
 * The local side of the "Lightspeed Retail (X-Series) → Postgres" example:
 * your own tables (schema `pos` of Syncline's database), filled from the
 * store's API 2.0. In a real project these come from your migrations;
 * Syncline never creates or alters them.
 *
 * Keys are Lightspeed's ids (UUIDs): they never change, and every reference
 * in the API holds them, so the foreign keys below are the store's own
 * links. Money is numeric (the API sends up to five decimal places), times
 * are timestamptz (the API sends ISO 8601 with an offset).
 *
 * Every table keeps `version`, Lightspeed's global change counter: the
 * entities' cursor (an incremental run asks for ?after=<the highest version
 * merged>). `deleted_at` is how the API reports a deletion: Syncline deletes
 * such a record's row (deletedWhen), so locally it is always null; it is
 * kept because the merge must see it.
 *
 * Safe to run again and again: only `if not exists`, never a drop.
 */

create schema if not exists pos;
comment on schema pos is 'A Lightspeed Retail (X-Series) store: reference data, products, customers, stock and sales, kept in step by Syncline.';

create table if not exists pos.taxes (
  id uuid primary key,
  name text not null,
  rate numeric(8, 5) not null check (rate >= 0 and rate < 1),
  version bigint not null,
  deleted_at timestamptz
);
comment on table pos.taxes is 'Sales taxes (GET /api/2.0/taxes).';
comment on column pos.taxes.rate is 'The rate as a fraction: 0.15 is 15 %.';
comment on column pos.taxes.version is 'Lightspeed''s global change counter when the record last changed: the incremental cursor.';
comment on column pos.taxes.deleted_at is 'Set by the API on a deleted record; such a record deletes its row, so it is null here.';

create table if not exists pos.outlets (
  id uuid primary key,
  name text not null,
  currency char(3),
  time_zone text,
  default_tax_id uuid references pos.taxes (id),
  version bigint not null,
  deleted_at timestamptz
);
comment on table pos.outlets is 'Stores and locations with their registers (GET /api/2.0/outlets).';
comment on column pos.outlets.time_zone is 'IANA time zone of the outlet (sale times are stored in UTC; convert with at time zone).';
comment on column pos.outlets.version is 'Lightspeed''s change counter: the incremental cursor.';

create table if not exists pos.users (
  id uuid primary key,
  username text not null,
  display_name text,
  email text,
  account_type text,
  created_at timestamptz,
  version bigint not null,
  deleted_at timestamptz
);
comment on table pos.users is 'Staff accounts that ring up sales (GET /api/2.0/users).';
comment on column pos.users.account_type is 'admin, manager or cashier.';
comment on column pos.users.version is 'Lightspeed''s change counter: the incremental cursor.';

create table if not exists pos.brands (
  id uuid primary key,
  name text not null,
  description text,
  version bigint not null,
  deleted_at timestamptz
);
comment on table pos.brands is 'Product brands (GET /api/2.0/brands).';
comment on column pos.brands.version is 'Lightspeed''s change counter: the incremental cursor.';

create table if not exists pos.suppliers (
  id uuid primary key,
  name text not null,
  description text,
  source text,
  version bigint not null,
  deleted_at timestamptz
);
comment on table pos.suppliers is 'Suppliers products are bought from (GET /api/2.0/suppliers).';
comment on column pos.suppliers.version is 'Lightspeed''s change counter: the incremental cursor.';

create table if not exists pos.customer_groups (
  id uuid primary key,
  name text not null,
  group_id text,
  version bigint not null,
  deleted_at timestamptz
);
comment on table pos.customer_groups is 'Customer groups, for price books and reporting (GET /api/2.0/customer_groups).';
comment on column pos.customer_groups.version is 'Lightspeed''s change counter: the incremental cursor.';

create table if not exists pos.product_categories (
  id uuid primary key,
  name text not null,
  parent_id uuid references pos.product_categories (id),
  root_id uuid,
  version bigint,
  deleted_at timestamptz,
  check (parent_id is distinct from id)
);
comment on table pos.product_categories is 'The category tree (GET /api/2.0/product_categories, paged by id, not by version: every run reads it whole).';
comment on column pos.product_categories.parent_id is 'The parent category (parent_category_id); null at a root. A category may arrive before its parent: one merge inserts both.';
comment on column pos.product_categories.root_id is 'The top of this category''s tree (root_category_id); not a foreign key, the API may send it before the root exists.';
comment on column pos.product_categories.version is 'Lightspeed''s change counter, kept for reference (this endpoint pages by id).';
create index if not exists product_categories_parent_idx on pos.product_categories (parent_id);
comment on index pos.product_categories_parent_idx is 'Lets the categories merge check cheaply whether a category still has children before deleting it.';

create table if not exists pos.products (
  id uuid primary key,
  handle text,
  sku text,
  name text not null,
  brand_id uuid references pos.brands (id),
  supplier_id uuid references pos.suppliers (id),
  category_id uuid references pos.product_categories (id),
  price_excluding_tax numeric(16, 5) check (price_excluding_tax >= 0),
  supply_price numeric(16, 5),
  is_active boolean not null default true,
  created_at timestamptz,
  updated_at timestamptz,
  version bigint not null,
  deleted_at timestamptz
);
comment on table pos.products is 'Products (GET /api/2.0/products).';
comment on column pos.products.category_id is 'The first of the product''s categories (categories.0.id).';
comment on column pos.products.price_excluding_tax is 'Retail price before tax, five decimal places as the API sends it.';
comment on column pos.products.supply_price is 'Cost price from the supplier.';
comment on column pos.products.version is 'Lightspeed''s change counter: the incremental cursor.';
create index if not exists products_brand_idx on pos.products (brand_id);
create index if not exists products_supplier_idx on pos.products (supplier_id);
create index if not exists products_category_idx on pos.products (category_id);
comment on index pos.products_category_idx is 'Lets the categories merge check cheaply whether a category is still used before deleting it (brand and supplier likewise).';

create table if not exists pos.customers (
  id uuid primary key,
  customer_code text,
  first_name text,
  last_name text,
  email text,
  customer_group_id uuid references pos.customer_groups (id),
  loyalty_balance numeric(16, 5),
  created_at timestamptz,
  updated_at timestamptz,
  version bigint not null,
  deleted_at timestamptz
);
comment on table pos.customers is 'Customers (GET /api/2.0/customers).';
comment on column pos.customers.loyalty_balance is 'Loyalty credit the customer holds.';
comment on column pos.customers.version is 'Lightspeed''s change counter: the incremental cursor.';
create index if not exists customers_group_idx on pos.customers (customer_group_id);

create table if not exists pos.inventory (
  id uuid primary key,
  product_id uuid not null references pos.products (id),
  outlet_id uuid not null references pos.outlets (id),
  inventory_level integer not null,
  reorder_point integer,
  reorder_amount integer,
  average_cost numeric(16, 5),
  version bigint not null,
  deleted_at timestamptz,
  unique (product_id, outlet_id)
);
comment on table pos.inventory is 'Stock of a product at an outlet (GET /api/2.0/inventory), one row per product × outlet.';
comment on column pos.inventory.inventory_level is 'Units on hand; negative when more was sold than counted in.';
comment on column pos.inventory.version is 'Lightspeed''s change counter: the incremental cursor.';
create index if not exists inventory_outlet_idx on pos.inventory (outlet_id);

create table if not exists pos.sales (
  id uuid primary key,
  outlet_id uuid not null references pos.outlets (id),
  register_id uuid,
  user_id uuid references pos.users (id),
  customer_id uuid references pos.customers (id),
  invoice_number text,
  status text not null,
  note text,
  sale_date timestamptz not null,
  created_at timestamptz,
  updated_at timestamptz,
  total_price numeric(16, 5) not null,
  total_tax numeric(16, 5) not null,
  version bigint not null,
  deleted_at timestamptz
);
comment on table pos.sales is 'Sales (GET /api/2.0/sales); their line items are in pos.sale_line_items.';
comment on column pos.sales.status is 'CLOSED, ONACCOUNT, LAYBY, VOIDED, …: a voided sale stays, with this status.';
comment on column pos.sales.total_price is 'Total before tax: the sum of its line items'' price_total.';
comment on column pos.sales.total_tax is 'Total tax: the sum of its line items'' tax_total.';
comment on column pos.sales.version is 'Lightspeed''s change counter: the incremental cursor.';
create index if not exists sales_customer_idx on pos.sales (customer_id);
create index if not exists sales_outlet_date_idx on pos.sales (outlet_id, sale_date);
create index if not exists sales_user_idx on pos.sales (user_id);

create table if not exists pos.sale_line_items (
  id uuid primary key,
  sale_id uuid not null references pos.sales (id),
  product_id uuid not null references pos.products (id),
  tax_id uuid references pos.taxes (id),
  sequence integer,
  quantity numeric(12, 3) not null,
  price numeric(16, 5) not null,
  tax numeric(16, 5) not null,
  discount numeric(16, 5) not null default 0,
  price_total numeric(16, 5) not null,
  tax_total numeric(16, 5) not null,
  discount_total numeric(16, 5) not null default 0,
  note text,
  version bigint,
  deleted_at timestamptz
);
comment on table pos.sale_line_items is 'Line items, nested in each sale (line_items): a sale''s set is replaced as a whole when the sale changes.';
comment on column pos.sale_line_items.sale_id is 'The sale the item is nested in (the parent''s id).';
comment on column pos.sale_line_items.quantity is 'Units sold; negative on a return.';
comment on column pos.sale_line_items.price is 'Unit price before tax, after the unit discount.';
comment on column pos.sale_line_items.price_total is 'price × quantity.';
comment on column pos.sale_line_items.tax_total is 'tax × quantity.';
comment on column pos.sale_line_items.deleted_at is 'The sale''s deleted_at (a parent column): the items of a deleted sale are deleted with it.';
comment on column pos.sale_line_items.version is 'The version of the sale the item came with (the parent''s version): the incremental cursor.';
create index if not exists sale_line_items_sale_idx on pos.sale_line_items (sale_id);
create index if not exists sale_line_items_product_idx on pos.sale_line_items (product_id);
comment on index pos.sale_line_items_product_idx is 'Lets the products merge check cheaply whether a product was ever sold before deleting it.';
