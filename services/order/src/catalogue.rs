//! Current prices, asked of the catalogue (the inventory service) for every placement: an order
//! is charged what the product costs when it is placed, never what the client says it costs.

use std::{collections::HashMap, time::Duration};

use tonic::{Code, transport::Channel};
use zentra_proto::inventory::v1::{
    BatchGetProductsRequest, inventory_service_client::InventoryServiceClient,
};
use zentra_runtime::{
    client,
    validate::{Price, Sku},
};

use crate::{config::OrderSettings, error::OrderError};

/// A client of the catalogue.
#[derive(Clone)]
pub struct Catalogue {
    client: InventoryServiceClient<Channel>,
    timeout: Duration,
}

impl Catalogue {
    /// A catalogue at `settings.catalogue_url` (over `tls` if it is `https://`), connected on
    /// first use.
    pub fn new(
        settings: &OrderSettings,
        tls: Option<&zentra_runtime::config::ClientTlsConfig>,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            client: InventoryServiceClient::new(client::lazy_channel(
                &settings.catalogue_url,
                tls,
            )?),
            timeout: settings.catalogue_timeout,
        })
    }

    /// The current price of each of `skus` that has a product; unknown SKUs are absent.
    pub async fn prices(&self, skus: Vec<Sku>) -> Result<HashMap<Sku, Price>, OrderError> {
        let request = BatchGetProductsRequest {
            skus: skus.iter().map(|sku| sku.as_str().to_owned()).collect(),
        };
        let mut catalogue = self.client.clone();
        let call = catalogue.batch_get_products(client::request(request, self.timeout));
        // The server drops the call at its deadline too; this bounds a peer that never answers.
        let response = tokio::time::timeout(self.timeout + Duration::from_millis(250), call)
            .await
            .map_err(|_| OrderError::CatalogueUnavailable {
                reason: format!("no answer within {:?}", self.timeout),
            })?
            .map_err(|status| match status.code() {
                // Our own request was refused: a bug on this side, not the caller's.
                Code::InvalidArgument => OrderError::CatalogueRefused {
                    reason: status.message().to_owned(),
                },
                _ => OrderError::CatalogueUnavailable {
                    reason: format!("{:?}: {}", status.code(), status.message()),
                },
            })?
            .into_inner();
        let by_sku: HashMap<&str, &Sku> = skus.iter().map(|sku| (sku.as_str(), sku)).collect();
        Ok(response
            .products
            .into_iter()
            .filter_map(|product| {
                let sku = by_sku.get(product.sku.as_str())?;
                let price = product.unit_price?;
                Some((
                    (*sku).clone(),
                    Price {
                        amount_minor: price.amount_minor,
                        currency: price.currency_code,
                    },
                ))
            })
            .collect())
    }
}
